"""Tiny random Hugging Face models (Qwen3, Qwen2, Llama 3 with llama3 RoPE scaling), built
offline with `transformers` and saved with `save_pretrained`."""
import torch

FAMILIES = ("qwen3", "qwen2", "llama")


def hf_config(family: str, vocab_size: int = 400, tie: bool = None, layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  attn_implementation="eager", pad_token_id=0, eos_token_id=2)
    if family == "qwen3":
        # head_dim independent of hidden / heads (64 / 4 = 16)
        return tf.Qwen3Config(**common, head_dim=24, rope_theta=1e6, rms_norm_eps=1e-6,
                              tie_word_embeddings=True if tie is None else tie)
    if family == "qwen2":
        return tf.Qwen2Config(**common, rope_theta=1e6, rms_norm_eps=1e-6,
                              tie_word_embeddings=False if tie is None else tie)
    if family == "llama":
        return tf.LlamaConfig(**common, rope_theta=500000.0, rms_norm_eps=1e-5,
                              tie_word_embeddings=False if tie is None else tie,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 64})
    raise ValueError(family)


def build_hf_model(family: str, out_dir: str = None, seed: int = 0, weight_std: float = 0.2, **kwargs):
    """A random-init *ForCausalLM in float32 (eval mode), saved to out_dir if given.

    Weights are re-drawn with std `weight_std` (and norms away from 1) so that every
    component (biases, q/k norms, RoPE) visibly changes the outputs."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = hf_config(family, **kwargs)
    model = tf.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(weight_std * torch.randn_like(p))
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model
