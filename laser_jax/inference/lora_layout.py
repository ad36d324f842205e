"""Checkpoints written with one LoRA adapter pair per projection (before issue 22) restore
into today's fused layout (`laser_jax.model.lora`).

Orbax restores a pytree only onto the structure it was written with, so an old checkpoint
(`trainable/lora/.../q_proj/{a, b}`, and the Adam moments shaped like it) is restored onto
the per-projection twin of the expected state (`per_projection_item`) and then fused
(`lora.fuse_layout`: the blocks concatenated, which is exact, Adam's moments included since
they are elementwise). The stored layout is read from the checkpoint's own metadata
(`stored_per_projection`), so nothing is guessed from a failure.
"""
from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from laser_jax.model import lora
from laser_jax.model.config import ModelConfig


def stored_tree(state_dir: str):
    """The pytree (of Orbax array metadata) stored in an Orbax PyTree directory."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        meta = checkpointer.metadata(state_dir)
    meta = getattr(meta, "item_metadata", meta)
    return getattr(meta, "tree", meta)


def stored_per_projection(state_dir: str) -> bool:
    """Whether the checkpoint's state holds per-projection LoRA adapters (the old layout).
    Unreadable metadata counts as the current layout: the restore then reports the damage."""
    try:
        tree = stored_tree(state_dir)
    except Exception:  # noqa: BLE001 (a damaged checkpoint is the restore's to report)
        return False
    return lora.has_per_projection_layout(tree)


def _replicated(sharding):
    return NamedSharding(sharding.mesh, PartitionSpec()) if isinstance(sharding, NamedSharding) else sharding


def per_projection_item(item, cfg: ModelConfig):
    """The abstract restore item (jax.ShapeDtypeStruct leaves, fused layout) with each adapter
    group split into its projections' {a, b}. Split leaves are replicated over the item's mesh
    (adapters are small; `fuse_restored` puts them back on the item's shardings)."""
    def split(a, b, widths):
        rank = a.shape[-1] // len(widths)
        return [(jax.ShapeDtypeStruct(a.shape[:-1] + (rank,), a.dtype, sharding=_replicated(a.sharding)),
                 jax.ShapeDtypeStruct(b.shape[:-1] + (w,), b.dtype, sharding=_replicated(b.sharding)))
                for w in widths]

    return lora.split_layout(item, cfg, split)


def fuse_restored(restored, item):
    """A tree restored in the per-projection layout -> the fused layout, each leaf on the
    sharding `item` (the fused abstract tree) gives it."""
    fused = lora.fuse_layout(restored)
    return jax.tree_util.tree_map(lambda x, spec: jax.device_put(x, spec.sharding), fused, item)
