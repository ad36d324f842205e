"""Device mesh (data, fsdp, tensor), logical axis rules, and NamedShardings.

Parameters carry logical axis names (model/layers.py); these rules map them onto the mesh:
batch over data x fsdp, the hidden axis of weights over fsdp (ZeRO-3 style), heads / mlp /
vocab over tensor.
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from laser_jax.data.errors import ConfigError

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
        from jax.experimental import mesh_utils

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


@contextlib.contextmanager
def batch_sharded_activations(mesh: Mesh):
    """While tracing under this context, every decoder layer's input and output residual
    stream [B, T, D] is constrained to be split over the batch axes (data x fsdp).

    Without it XLA's sharding propagation may resolve the conflict between batch-split
    activations and fsdp-split weights by gathering the activations (every device then
    computes the whole batch, with the whole batch's activations) instead of gathering the
    weights (ZeRO-3). Arrays whose batch does not divide over the data-parallel devices
    are left to propagation. Applied with a flax method interceptor, so the model code
    needs no mesh.
    """
    from laser_jax.model.decoder import DecoderLayer

    dp = data_parallel_size(mesh)
    target = NamedSharding(mesh, P(BATCH))

    def constrain(x):
        return jax.lax.with_sharding_constraint(x, target) if x.shape[0] % dp == 0 else x

    def interceptor(next_fun, args, kwargs, context):
        if dp == 1 or context.method_name != "__call__" or not isinstance(context.module, DecoderLayer):
            return next_fun(*args, **kwargs)
        x, *rest = args
        out, cache = next_fun(constrain(x), *rest, **kwargs)
        return constrain(out), cache

    # The mesh is also made the ambient abstract mesh, for code that must place a kernel
    # under shard_map itself (a Pallas kernel cannot be partitioned by XLA).
    with nn.intercept_methods(interceptor), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield
