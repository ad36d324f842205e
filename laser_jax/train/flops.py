"""Model FLOP counts of a LaSER step (for tokens/s, TFLOP/s and MFU reporting).

The convention is the usual 6PT (and the PyTorch baseline's): 6 x non-embedding
parameters x tokens processed, where a step processes B(Lq + J - 1) latent query
positions, BG(Ld + J - 1) latent document positions and B(Le + 1) explicit positions.
With LoRA the real work is smaller (no base weight gradients); 6PT is reported anyway
so numbers compare across implementations.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax

# Dense bf16 peak per device, TFLOP/s.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "v4": 275.0, "v5e": 197.0,
               "v5 lite": 197.0, "v5p": 459.0, "v6e": 918.0, "v6 lite": 918.0}


def step_tokens(shapes: Mapping[str, tuple], num_steps: int, explicit: bool) -> int:
    """Positions the step runs through the backbone, from the batch's array shapes."""
    (b, lq), (bd, ld) = shapes["q_ids"], shapes["d_ids"]
    tokens = b * (lq + num_steps - 1) + bd * (ld + num_steps - 1)
    if explicit:
        be, le = shapes["e_ids"]
        tokens += be * (le + 1)
    return tokens


def train_flops(non_embedding_params: int, tokens: int) -> float:
    return 6.0 * non_embedding_params * tokens


def device_peak_tflops(override: float = 0.0) -> Optional[float]:
    """Per-device peak from the device kind (None when unknown, e.g. CPU)."""
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None
