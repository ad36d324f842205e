"""Device mesh (data, fsdp, tensor), logical axis rules, and NamedShardings.

Parameters and the activations the model constrains carry logical axis names
(model/layers.py, model/partitioning.py); these rules map them onto the mesh: batch over
data x fsdp, the hidden axis of weights over fsdp (ZeRO-3 style), heads / mlp / vocab over
tensor. The model never sees the mesh: the train step traces under these rules and the
mesh (`batch_sharded_activations`).
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from laser_jax.data.errors import ConfigError
from laser_jax.model.partitioning import ACTIVATION_AXES, ACTIVATION_BATCH, ACTIVATION_KV_HEADS

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")
TENSOR = "tensor"

LOGICAL_RULES: Tuple[Tuple[str, object], ...] = (
    ("batch", BATCH),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("head_dim", None),
    ("lora_rank", None),
    # activations (model/partitioning.py): the residual stream split over the batch only
    (ACTIVATION_BATCH, BATCH),
    (ACTIVATION_AXES[1], None),
    (ACTIVATION_AXES[2], None),
    (ACTIVATION_KV_HEADS, TENSOR),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> Tuple[int, int, int]:
    """Fill a -1 in (data, fsdp, tensor) so the product is `num_devices`."""
    shape = [int(s) for s in shape]
    if len(shape) != 3:
        raise ConfigError(f"mesh.shape: {tuple(shape)} must have 3 entries (data, fsdp, tensor)")
    known = int(np.prod([s for s in shape if s != -1]))
    if shape.count(-1) == 1:
        if num_devices % known:
            raise ConfigError(f"mesh.shape: {tuple(shape)} does not divide the {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ConfigError(f"mesh.shape: {tuple(shape)} needs {int(np.prod(shape))} devices, "
                          f"but {num_devices} are available")
    return tuple(shape)


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all), Auto axis types."""
    devices = list(jax.devices() if devices is None else devices)
    dims = resolve_mesh_shape(shape, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(dims, devices)
    except Exception:  # non-TPU topologies without a physical layout
        grid = np.array(devices).reshape(dims)
    return Mesh(grid, AXES)


def logical_shardings(mesh: Mesh, boxed_tree):
    """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes
    (unboxed leaves are replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp."""
    return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def abstract_sharded(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves, each carrying its sharding from `shardings`
    (a tree of the same structure): what `jit(...).lower` takes to compile without data."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@contextlib.contextmanager
def batch_sharded_activations(mesh: Mesh):
    """While tracing under this context, the model's logical activation names map onto
    `mesh` (`LOGICAL_RULES`, with the mesh made the ambient abstract mesh): every decoder
    layer's input and output residual stream [B, T, D] is constrained to be split over the
    batch axes (data x fsdp), and the splash kernel's shard_map splits its batch and kv
    heads (model/partitioning.py). Arrays whose batch does not divide over the
    data-parallel devices are left to propagation.
    """
    with nn.logical_axis_rules(LOGICAL_RULES), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield
