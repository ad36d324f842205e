"""LaSER on Qwen3-4B, the paper's settings (see configs/qwen3_0p6b.py). `:smoke` shrinks it."""
from laser_jax.train.config import apply_variant, base_config


def get_config(arg=None):
    c = base_config()                 # paper / authors' hyper-parameters
    c.model.preset = "qwen3_4b"        # architecture if init_from is empty
    c.model.init_from = ""             # the Hugging Face Qwen3-4B directory
    c.model.remat_policy = "dots_no_batch"  # recompute the rest in backward (36 layers of activations)
    c.data.chat_template = True        # chat wrapping as in the authors' Qwen3 runs
    c.mesh.shape = (1, -1, 1)          # FSDP over all devices
    return apply_variant(c, arg, "configs/qwen3_4b.py")
