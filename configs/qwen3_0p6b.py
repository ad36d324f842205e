"""LaSER on Qwen3-0.6B with the paper's settings (LoRA r=64, alpha=32 on all projections;
AdamW 1e-4, warm-up 0.1, one epoch; 8 queries x (1 positive + 1 hard negative) per step;
bf16; K=3; tau 0.02 / tau_kd 0.02 / tau_mid 0.05; lambda 1 / 10 / 0.1).

    python -m laser_jax.train --config=configs/qwen3_0p6b.py --workdir=runs/q06 \
        --config.model.init_from=/path/to/Qwen3-0.6B --config.data.train_files=/path/to/reasonemb.jsonl

Variant `:smoke` shrinks it to a tiny random model on the synthetic task (CPU, seconds).
"""
from laser_jax.train.config import apply_variant, base_config


def get_config(arg=None):
    c = base_config()                 # every default is the paper's / authors' setting
    c.model.preset = "qwen3_0_6b"      # architecture if init_from is left empty (random init)
    c.model.init_from = ""             # set to the Hugging Face Qwen3-0.6B directory
    c.model.param_dtype = "float32"    # LoRA adapters and optimizer state in float32
    c.model.compute_dtype = "bfloat16"  # bf16 training as in the paper
    c.data.train_files = ""            # ReasonEmb JSONL (or HF save_to_disk / ArrayRecord)
    c.data.chat_template = True        # the authors wrap Qwen3 texts in the chat template
    return apply_variant(c, arg, "configs/qwen3_0p6b.py")
