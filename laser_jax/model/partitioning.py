"""Logical axis names of activations, and sharding constraints that need no mesh in the model.

Parameters carry logical axis names (`nn.with_logical_partitioning`, model/layers.py); so do
the activations the model constrains. The names are mapped onto mesh axes only by the
caller's context: the train step traces under `nn.logical_axis_rules(rules)` and an ambient
(abstract) mesh (`batch_sharded_activations` in train/sharding.py). Outside such a context
every function here is a no-op, so the model runs unchanged on one device, in inference
and in tests.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax

# The residual stream [B, T, D] between decoder layers.
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")
# Batch and kv-head axes of attention's [B, T, K, H] inputs (the splash kernel's shard_map).
ACTIVATION_BATCH = "activation_batch"
ACTIVATION_KV_HEADS = "activation_kv_heads"


def mesh_axes(logical_name: str) -> Tuple[str, ...]:
    """The ambient mesh's axes that the context's logical rules map `logical_name` onto
    (only axes the mesh has); () outside a rules context or a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    entry = nn.logical_to_mesh_axes((logical_name,))[0]
    names = (entry,) if isinstance(entry, str) else tuple(entry or ())
    return tuple(a for a in names if a in mesh.axis_names)


def mesh_size(axes: Sequence[str]) -> int:
    """Devices along `axes` of the ambient mesh (1 for none)."""
    mesh = jax.sharding.get_abstract_mesh()
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    return math.prod(sizes[a] for a in axes)


def divisible_axes(logical_name: str, size: int) -> Optional[Tuple[str, ...]]:
    """`mesh_axes(logical_name)` when they split `size` evenly, else None (not split)."""
    axes = mesh_axes(logical_name)
    return axes if axes and size % mesh_size(axes) == 0 else None


def constrain_batch_split(x_BTD):
    """The residual stream constrained to be split over the batch axes of the context's rules.

    Without it XLA's sharding propagation may resolve the conflict between batch-split
    activations and fsdp-split weights by gathering the activations (every device then
    computes the whole batch, with the whole batch's activations) instead of gathering the
    weights (ZeRO-3). Arrays whose batch does not divide over those axes, and meshes where
    they are a single device, are left to propagation; outside a rules context and a mesh
    this is a no-op.
    """
    axes = divisible_axes(ACTIVATION_BATCH, x_BTD.shape[0])
    if not axes or mesh_size(axes) == 1:
        return x_BTD
    return nn.with_logical_constraint(x_BTD, ACTIVATION_AXES)
