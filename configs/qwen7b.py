"""LaSER on Qwen2.5-7B (q/k/v biases, no q/k norm, untied head), the paper's settings.

    python -m laser_jax.train --config=configs/qwen7b.py --workdir=gs://bucket/runs/qwen7b \
        --config.model.init_from=/path/to/Qwen2.5-7B --config.data.train_files=...

`:smoke` shrinks it to a tiny random model on the synthetic task.
"""
from laser_jax.train.config import apply_variant, base_config


def get_config(arg=None):
    c = base_config()                 # paper / authors' hyper-parameters
    c.model.preset = "qwen2_5_7b"      # architecture if init_from is empty
    c.model.init_from = ""             # the Hugging Face Qwen2.5-7B directory
    c.model.remat_policy = "dots_no_batch"  # activation recompute for 28 wide layers
    c.data.chat_template = False       # Qwen2.5 has no think block; plain texts
    c.mesh.shape = (1, -1, 1)          # FSDP over all devices
    return apply_variant(c, arg, "configs/qwen7b.py")
