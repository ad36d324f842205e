"""LoRA adapters: merge them into the base weights.

Adapters live in their own variable collection (`lora`), mirroring the `params` paths of
the projections they adapt: params/.../q_proj/kernel [.., in, out] gets
lora/.../q_proj/a [.., in, R] and lora/.../q_proj/b [.., R, out].
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import traverse_util

from laser_jax.model.config import ModelConfig


def merge(params: dict, lora: dict, cfg: ModelConfig) -> dict:
    """Params with every adapter folded in: kernel + a @ b * alpha / rank (float32 math)."""
    flat = traverse_util.flatten_dict(params)
    adapters = traverse_util.flatten_dict(lora)
    scale = cfg.lora_alpha / cfg.lora_rank
    for key, a in adapters.items():
        if key[-1] != "a":
            continue
        b = adapters[key[:-1] + ("b",)]
        kernel_key = key[:-1] + ("kernel",)
        if kernel_key not in flat:
            raise KeyError(f"LoRA adapter {'/'.join(key[:-1])} has no base kernel")
        kernel = flat[kernel_key]
        delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32)) * scale
        flat[kernel_key] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
