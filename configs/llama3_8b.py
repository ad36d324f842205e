"""LaSER on Llama-3.1-8B (llama3 RoPE scaling, untied head), the paper's settings.
`:smoke` shrinks it to a tiny random Llama on the synthetic task."""
from laser_jax.train.config import apply_variant, base_config


def get_config(arg=None):
    c = base_config()                 # paper / authors' hyper-parameters
    c.model.preset = "llama3_1_8b"     # architecture if init_from is empty
    c.model.init_from = ""             # the Hugging Face Llama-3.1-8B directory
    c.model.remat_policy = "dots_no_batch"  # activation recompute
    c.data.chat_template = False       # plain texts (no Qwen think block)
    c.mesh.shape = (1, -1, 1)          # FSDP over all devices
    return apply_variant(c, arg, "configs/llama3_8b.py")
