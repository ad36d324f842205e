"""Small base layers: RMSNorm, linear projections, fused LoRA adapters, rotary embeddings.

Parameter names follow Hugging Face (`kernel` is HF's `weight` transposed), so import and
export are a transpose/stack. Every parameter carries logical axis names for sharding.

Axis letters: B batch, T length, D hidden, N heads, H head dim, R LoRA rank.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.model.config import ModelConfig, RopeScaling
from laser_jax.model.dropout import keep_mask
from laser_jax.model.lora import block_plan, group_name, target_groups

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
    """y = x @ kernel (+ bias). The kernel is [in, out] (HF weight transposed). LoRA updates
    are added by the caller (`with_lora`), one fused adapter pair per group of projections."""

    features: int
    axes: Tuple[str, str]
    cfg: ModelConfig
    use_bias: bool = False

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
        return y


class LoRA(nn.Module):
    """The low-rank updates of a group of projections reading the same input (model/lora.py):
    one a [in, n R] and one b [R, sum(out_i)] in the `lora` collection; returns the n updates
    dropout_i(x) @ a_i @ b_i * alpha / R.

    Both sides are one matmul: x @ a gives every member's [.., R] activation at once, and b
    is applied as a batched matmul over blocks of width gcd(out_i) (q's heads as G blocks of
    k's width, so q, k and v share one call), each block reading its member's activation.
    Dropout (only with a "dropout" rng and lora_dropout > 0; no mask otherwise) draws an
    independent mask per member, as one adapter per projection would (model/dropout.py: 16
    random bits per element, the keep probability rounded to a multiple of 1/65536).
    """

    widths: Tuple[int, ...]
    in_axis: str
    out_axis: str
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        n, r, d_in = len(self.widths), cfg.lora_rank, x.shape[-1]
        a = self.variable(LORA, "a", lambda: nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            (self.in_axis, "lora_rank"))(self.make_rng("params"), (d_in, n * r), pdt)).value
        b = self.variable(LORA, "b", lambda: nn.with_logical_partitioning(
            nn.initializers.zeros, ("lora_rank", self.out_axis))(
                self.make_rng("params"), (r, sum(self.widths)), pdt)).value
        a, b = nn.unbox(a).astype(cdt), nn.unbox(b).astype(cdt)
        x = x.astype(cdt)
        lead = x.shape[:-1]
        with jax.named_scope("lora"):
            scale = cfg.lora_alpha / r
            if cfg.lora_dropout > 0 and self.has_rng("dropout"):
                # Members lead the masked input [n, .., in] so the n matmuls are one batched
                # dot over a leading batch axis (no re-layout of the masked input), and the
                # inverted-dropout 1/keep joins alpha/R on the [.., n, R] result.
                mask, keep = keep_mask(self.make_rng("dropout"), cfg.lora_dropout, (n,) + lead + (d_in,))
                x_n = jnp.where(mask, x[None], jnp.zeros((), cdt))
                h = jnp.moveaxis(jnp.einsum("n...i,nir->n...r", x_n, a.reshape(d_in, n, r).transpose(1, 0, 2)), 0, -2)
                scale /= keep
            else:
                h = jnp.einsum("...i,ir->...r", x, a).reshape(lead + (n, r))
            h = h * jnp.asarray(scale, cdt)
            width, sources = block_plan(self.widths)
            if sources != tuple(range(n)):  # a member wider than the block feeds several blocks
                h = jnp.concatenate([jnp.broadcast_to(h[..., i:i + 1, :], lead + (sources.count(i), r))
                                     for i in range(n)], axis=-2)
            if len(sources) == 1:
                delta = jnp.einsum("...r,ro->...o", h[..., 0, :], b)
            else:
                delta = jnp.einsum("...jr,rjo->...jo", h, b.reshape(r, len(sources), width)).reshape(
                    lead + (sum(self.widths),))
            ends = np.cumsum(self.widths)
            return tuple(delta[..., end - w:end] for w, end in zip(self.widths, ends))


def with_lora(cfg: ModelConfig, x, outputs: Dict[str, jax.Array], shapes: Dict[str, Tuple[str, str]]) -> dict:
    """`outputs` (projection name -> x @ kernel) plus the LoRA updates of the configured
    targets among them, one `LoRA` module per group (named as model/lora.py names it).
    `shapes` maps each projection to its kernel's logical axes (in, out). Call it from a
    compact method: the adapters become its submodules."""
    if not cfg.lora_rank:
        return outputs
    outputs = dict(outputs)
    for members in target_groups(cfg.lora_targets, outputs):
        widths = tuple(outputs[m].shape[-1] for m in members)
        deltas = LoRA(widths, shapes[members[0]][0], shapes[members[0]][1], cfg, name=group_name(members))(x)
        for member, delta in zip(members, deltas):
            outputs[member] = outputs[member] + delta
    return outputs


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
