"""Small GGUF files for tests, written with `gguf.GGUFWriter` as llama.cpp's converter lays
them out: llama.cpp tensor names, float32 tensors, Llama's q/k rows permuted into llama.cpp's
rotary order, the architecture as metadata. Written from a tiny random Hugging Face model, so
the expected parameters are that model's state dict."""
import gguf
import numpy as np

_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute): the rows of each head
    are reordered from the Hugging Face rotary halves to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def write_model(path, model, arch: str, extra=None, extra_tensors=None) -> str:
    """Write a transformers *ForCausalLM (float32) as a GGUF file of `arch`; `extra` adds
    metadata (key -> int/float/str), `extra_tensors` tensors (llama.cpp name -> array).
    Returns the path."""
    c = model.config
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    for key, value in (extra or {}).items():
        {int: w.add_uint32, float: w.add_float32, str: w.add_string}[type(value)](key, value)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = t.detach().float().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            t = llama_cpp_permute(t, heads if "q_proj" in name else kv)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(t))
    for name, t in (extra_tensors or {}).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def write_foreign(path, arch: str = "gpt2") -> str:
    """A small valid GGUF file of another architecture (`arch`), e.g. GPT-2's layout."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    w.add_tensor("blk.0.attn_qkv.weight", np.zeros((24, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def truncate(src, dst, keep: float = 0.6) -> str:
    """A copy of `src` cut to `keep` of its bytes (an interrupted download)."""
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:int(len(data) * keep)])
    return str(dst)
