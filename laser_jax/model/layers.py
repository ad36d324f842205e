"""Small base layers: RMSNorm, linear projections with optional LoRA, rotary embeddings.

Parameter names follow Hugging Face (`kernel` is HF's `weight` transposed), so import and
export are a transpose/stack. Every parameter carries logical axis names for sharding.

Axis letters: B batch, T length, D hidden, N heads, H head dim, R LoRA rank.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.model.config import ModelConfig, RopeScaling

LORA = "lora"  # variable collection holding LoRA adapters


def dtype_of(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, computed in float32 (as Hugging Face)."""

    eps: float
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale.astype(jnp.float32) * x32).astype(x.dtype)


class Proj(nn.Module):
    """y = x @ kernel (+ bias) (+ LoRA: dropout(x) @ a @ b * alpha / rank).

    The kernel is [in, out] (HF weight transposed). LoRA adapters live in the separate
    `lora` collection, so training can differentiate them alone while the base is frozen.
    LoRA dropout is active only when a "dropout" rng is passed to `apply`.
    """

    features: int
    axes: Tuple[str, str]
    cfg: ModelConfig
    use_bias: bool = False
    lora: bool = False

    @nn.compact
    def __call__(self, x):
        cdt, pdt = dtype_of(self.cfg.compute_dtype), dtype_of(self.cfg.param_dtype)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), self.axes), (x.shape[-1], self.features), pdt)
        y = jnp.einsum("...i,io->...o", x.astype(cdt), kernel.astype(cdt))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, (self.axes[1],)), (self.features,), pdt)
            y = y + bias.astype(cdt)
        if self.lora:
            r = self.cfg.lora_rank
            a = self.variable(LORA, "a", lambda: nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                (self.axes[0], "lora_rank"))(self.make_rng("params"), (x.shape[-1], r), pdt)).value
            b = self.variable(LORA, "b", lambda: nn.with_logical_partitioning(
                nn.initializers.zeros, ("lora_rank", self.axes[1]))(
                    self.make_rng("params"), (r, self.features), pdt)).value
            a, b = nn.unbox(a), nn.unbox(b)
            h = x.astype(cdt)
            if self.cfg.lora_dropout > 0 and self.has_rng("dropout"):
                h = nn.Dropout(self.cfg.lora_dropout, deterministic=False)(h)
            h = jnp.einsum("...i,ir->...r", h, a.astype(cdt))
            y = y + jnp.einsum("...r,ro->...o", h, b.astype(cdt)) * (self.cfg.lora_alpha / r)
        return y


# ---------------------------------------------------------------------------------------
# Rotary position embeddings (rotate-half convention, as Hugging Face)
# ---------------------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling]) -> np.ndarray:
    """Inverse frequencies [H/2] in float32, with llama3 scaling when given."""
    inv = (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
           ).astype(np.float32)
    if scaling is None:
        return inv
    old = scaling.original_max_position_embeddings
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BTNH, positions_BT, inv_freq):
    """Rotate x by its positions (rotate-half layout); cos/sin in float32."""
    freqs = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    cos, sin = jnp.cos(emb).astype(x_BTNH.dtype), jnp.sin(emb).astype(x_BTNH.dtype)
    half = x_BTNH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], axis=-1)
    return x_BTNH * cos + rotated * sin
