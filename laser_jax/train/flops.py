"""FLOP counts of a LaSER step and the peak rates they are divided by (tokens/s, TFLOP/s, MFU).

Two counts, both reported by the trainer (metrics.jsonl) and by `bench/bench_laser.py`:

* `model_6pt`, the usual convention (and the PyTorch baseline's): 6 x non-embedding
  parameters x positions, where a step runs B(Lq + J - 1) latent query positions,
  BG(Ld + J - 1) latent document positions and B(Le + 1) explicit positions. It compares
  across implementations, but it is not what runs: LoRA without remat does about 4PT
  (no base weight gradients), full fine-tuning with full remat about 8PT.
* `executed`, the matrix-multiply FLOPs the chosen setting runs: forward and backward
  through every projection (weight gradients only for what trains: the base in full
  fine-tuning, the adapters with LoRA), the LoRA adapters' own matmuls, the causal attention
  scores and mixing (the causal half, as flash kernels compute it), the soft-token LM-head
  passes (logits and expected embedding per soft step; none with soft_token "pause"), and the
  forward recomputed in the backward pass under the remat policy. MFU is computed from this count.

Peaks: the data-sheet dense bf16 rate per device kind (`DATASHEET_TFLOPS`), and where one was
measured on this project's machines, the measured bf16 matmul rate (`MEASURED_TFLOPS`: 804
TFLOP/s for an 8192^3 matmul on an H200). Both are reported, each with its MFU.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from laser_jax.model.config import ModelConfig

# Dense bf16 data-sheet peak per device, TFLOP/s.
DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "v4": 275.0, "v5e": 197.0,
                    "v5 lite": 197.0, "v5p": 459.0, "v6e": 918.0, "v6 lite": 918.0}
# Measured bf16 matmul rate (JAX, 8192^3) on this project's machines, TFLOP/s.
MEASURED_TFLOPS = {"H200": 804.0}
PEAK_TFLOPS = DATASHEET_TFLOPS  # the name older callers use


def step_tokens(shapes: Mapping[str, tuple], num_steps: int, explicit: bool) -> int:
    """Positions the step runs through the backbone, from the batch's array shapes."""
    (b, lq), (bd, ld) = shapes["q_ids"], shapes["d_ids"]
    tokens = b * (lq + num_steps - 1) + bd * (ld + num_steps - 1)
    if explicit:
        be, le = shapes["e_ids"]
        tokens += be * (le + 1)
    return tokens


def train_flops(non_embedding_params: int, tokens: int) -> float:
    """The 6PT convention."""
    return 6.0 * non_embedding_params * tokens


def _projections(cfg: ModelConfig) -> dict:
    """(in, out) of every projection of one layer."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (d, qd), "k_proj": (d, kd), "v_proj": (d, kd), "o_proj": (qd, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def _recomputed(cfg: ModelConfig, remat: str) -> dict:
    """Fraction of each projection's forward recomputed in the backward pass."""
    if remat == "full":
        return {name: 1.0 for name in _projections(cfg)}
    if remat == "qkv_proj":  # q, k, v and the attention output are saved; the rest is recomputed
        return {name: 0.0 if name in ("q_proj", "k_proj", "v_proj") else 1.0 for name in _projections(cfg)}
    return {name: 0.0 for name in _projections(cfg)}  # none; dots / dots_no_batch save matmul outputs


def _causal_context(length: int) -> float:
    """Keys attended, summed over the positions of a causal row of `length` tokens."""
    return length * (length + 1) / 2.0


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step (module docstring): the 6PT convention and what runs."""

    model_6pt: float
    executed: float


def train_step_flops(cfg: ModelConfig, shapes: Mapping[str, tuple], num_steps: int, explicit: bool,
                     remat: Optional[str] = None) -> StepFlops:
    """FLOPs of one LaSER train step on a batch of these array shapes.

    Args:
      cfg: the model (its LoRA rank and targets, remat policy, sizes).
      shapes: {"q_ids": (B, Lq), "d_ids": (B*G, Ld), "e_ids": (B, Le)} (e_ids only with `explicit`).
      num_steps: J latent steps.
      explicit: whether the explicit view runs.
      remat: the remat policy (default: the model's).

    Returns:
      StepFlops(model_6pt, executed).
    """
    remat = cfg.remat_policy if remat is None else remat
    tokens = step_tokens(shapes, num_steps, explicit)
    p = cfg.num_params(include_embeddings=False)
    rows = [(shapes["q_ids"][0], shapes["q_ids"][1], num_steps - 1),
            (shapes["d_ids"][0], shapes["d_ids"][1], num_steps - 1)]
    if explicit:
        rows.append((shapes["e_ids"][0], shapes["e_ids"][1] + 1, 0))
    lora = bool(cfg.lora_rank)
    recompute = _recomputed(cfg, remat)
    linear = 0.0  # per token, summed over layers: forward, activation grads, weight grads, recompute
    for name, (din, dout) in _projections(cfg).items():
        base = 2.0 * din * dout
        adapter = 2.0 * cfg.lora_rank * (din + dout) if lora and name in cfg.lora_targets else 0.0
        fwd = base + adapter
        weight_grads = adapter if lora else base
        linear += fwd * (2.0 + recompute[name]) + weight_grads
    linear *= cfg.num_hidden_layers
    attn_fwd_per_key = 4.0 * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers  # QK^T and PV
    attn_factor = 3.0 + (1.0 if remat == "full" else 0.0)  # forward, 2x backward, recompute
    lm_head = soft_token_flops(cfg)  # logits + expected embedding, per soft step
    lm_factor = 2.0 + (0.0 if lora else 1.0)  # forward, activation grads, table grads when it trains
    executed = 0.0
    for b, length, soft in rows:
        positions = length + soft
        executed += b * positions * linear
        keys = _causal_context(length) + sum(length + j + 1 for j in range(soft))
        executed += b * keys * attn_fwd_per_key * attn_factor
        executed += b * soft * lm_head * lm_factor
    return StepFlops(model_6pt=train_flops(p, tokens), executed=executed)


def soft_token_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs of one soft step's input per row: the LM-head logits and the expected
    embedding (2VD each); none for a pause vector (soft_token "pause")."""
    return 0.0 if cfg.soft_token == "pause" else 4.0 * cfg.vocab_size * cfg.hidden_size


def encode_flops(cfg: ModelConfig, batch: int, length: int, num_steps: int) -> StepFlops:
    """FLOPs of one latent-view forward over `batch` rows of `length` tokens (no backward):
    model_6pt is the 2PT forward convention, executed adds attention and the LM head."""
    p = cfg.num_params(include_embeddings=False)
    soft = num_steps - 1
    keys = _causal_context(length) + sum(length + j + 1 for j in range(soft))
    executed = batch * (2.0 * p * (length + soft)
                        + keys * 4.0 * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
                        + soft * soft_token_flops(cfg))
    return StepFlops(model_6pt=2.0 * p * batch * (length + soft), executed=executed)


def _lookup(table: Mapping[str, float], device_kind: str) -> Optional[float]:
    for name, peak in table.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def peak_rates(device_kind: str, override: float = 0.0) -> dict:
    """{"datasheet": TFLOP/s or None, "measured": TFLOP/s or None} for a device kind;
    `override` (train.peak_tflops) replaces the data-sheet figure."""
    return {"datasheet": override or _lookup(DATASHEET_TFLOPS, device_kind),
            "measured": _lookup(MEASURED_TFLOPS, device_kind)}


def device_peak_tflops(override: float = 0.0) -> Optional[float]:
    """Per-device data-sheet peak of this machine's first device (None when unknown, e.g. CPU)."""
    import jax  # deferred: counting FLOPs needs no accelerator runtime

    return peak_rates(jax.devices()[0].device_kind, override)["datasheet"]


def throughput(flops: StepFlops, seconds: float, num_devices: int, peaks: Mapping[str, Optional[float]]) -> dict:
    """Per-device TFLOP/s of both counts and MFU against both peaks (keys absent when the peak
    is unknown): tflops_per_s (executed), model_tflops_per_s (6PT), mfu, mfu_measured_peak,
    peak_tflops, peak_tflops_measured."""
    scale = 1.0 / max(seconds, 1e-12) / 1e12 / max(num_devices, 1)
    out = {"tflops_per_s": flops.executed * scale, "model_tflops_per_s": flops.model_6pt * scale}
    if peaks.get("datasheet"):
        out.update(mfu=out["tflops_per_s"] / peaks["datasheet"], peak_tflops=peaks["datasheet"])
    if peaks.get("measured"):
        out.update(mfu_measured_peak=out["tflops_per_s"] / peaks["measured"], peak_tflops_measured=peaks["measured"])
    return out
