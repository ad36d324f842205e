"""LoRA adapters: their fused layout, its mapping from the per-projection layout, and merging.

Adapters live in their own variable collection (`lora`). The projections that read one input
share ONE adapter pair (`GROUPS`): q/k/v (the attention input), o, gate/up (the MLP input) and
down, each group restricted to the configured targets. Group `lora_<stems>` (e.g.
`lora_q_k_v`, `lora_gate_up`, `lora_o`) sits beside the projections it adapts:

    lora/.../self_attn/lora_q_k_v/a  [.., in, n * R]       = [a_q | a_k | a_v]
    lora/.../self_attn/lora_q_k_v/b  [.., R, sum(out_i)]   = [b_q | b_k | b_v]

i.e. member i's own a [in, R] and b [R, out_i] are column blocks (in member order), so
member i's update is x @ a_i @ b_i * alpha / R as before: the same function as one adapter
pair per projection, computed with one matmul per side (`layers.LoRA`).

Checkpoints written before this layout (issue 22) hold `lora/.../q_proj/{a, b}` per
projection: `fuse_layout` maps any pytree holding such dicts (parameters, Adam moments) to the
fused layout by concatenating the blocks; `split_layout` is its inverse.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Mapping, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from laser_jax.model.config import ModelConfig

GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
PROJECTIONS = tuple(p for group in GROUPS for p in group)
PREFIX = "lora_"


def target_groups(targets: Iterable[str], among: Iterable[str] = PROJECTIONS) -> Tuple[Tuple[str, ...], ...]:
    """The adapter groups of `targets` restricted to the projections `among` (GROUPS order)."""
    targets, among = set(targets), set(among)
    groups = (tuple(p for p in g if p in targets and p in among) for g in GROUPS)
    return tuple(g for g in groups if g)


def group_name(members: Tuple[str, ...]) -> str:
    """("q_proj", "k_proj", "v_proj") -> "lora_q_k_v"."""
    return PREFIX + "_".join(m[: -len("_proj")] for m in members)


def group_members(name: str) -> Tuple[str, ...]:
    """"lora_q_k_v" -> ("q_proj", "k_proj", "v_proj"); ValueError for other names."""
    members = tuple(f"{stem}_proj" for stem in name[len(PREFIX):].split("_")) if name.startswith(PREFIX) else ()
    if not members or any(m not in PROJECTIONS for m in members):
        raise ValueError(f"{name!r} is not a LoRA adapter group name (lora_ + projection stems, e.g. lora_q_k_v)")
    return members


def block_plan(widths: Tuple[int, ...]) -> Tuple[int, Tuple[int, ...]]:
    """(w, sources): the fused b's columns as blocks of width w = gcd(widths), and for each
    block the member whose low-rank activation it multiplies (member i owns widths[i] / w
    consecutive blocks). With equal widths each member is one block."""
    w = math.gcd(*widths)
    return w, tuple(i for i, width in enumerate(widths) for _ in range(width // w))


def projection_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, int]]:
    """(in, out) of every projection of one layer."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    qd, kd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (d, qd), "k_proj": (d, kd), "v_proj": (d, kd), "o_proj": (qd, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def split_group(a, b, widths: Tuple[int, ...]):
    """A fused group's (a, b) -> [(a_i [.., in, R], b_i [.., R, out_i])] per member."""
    rank = a.shape[-1] // len(widths)
    ends = [sum(widths[: i + 1]) for i in range(len(widths))]
    return [(a[..., i * rank:(i + 1) * rank], b[..., end - width:end])
            for i, (width, end) in enumerate(zip(widths, ends))]


def _is_adapter(node) -> bool:
    return isinstance(node, Mapping) and set(node) == {"a", "b"}


def _holds(node, test: Callable[[str], bool]) -> bool:
    return isinstance(node, Mapping) and any(test(k) and _is_adapter(v) for k, v in node.items())


def has_per_projection_layout(tree) -> bool:
    """Whether any dict in the pytree holds a per-projection adapter ({"q_proj": {"a", "b"}})."""
    found = []
    jax.tree_util.tree_map(lambda node: found.append(_holds(node, PROJECTIONS.__contains__)), tree,
                           is_leaf=lambda node: _holds(node, PROJECTIONS.__contains__))
    return any(found)


def _map_parents(tree, test, fn):
    """fn applied to every dict of the pytree holding adapters whose key passes `test`."""
    return jax.tree_util.tree_map(lambda node: fn(node) if _holds(node, test) else node, tree,
                                  is_leaf=lambda node: _holds(node, test))


def fuse_layout(tree):
    """Per-projection adapters (`q_proj: {a, b}`, ...) anywhere in the pytree -> the fused
    groups (`lora_q_k_v: {a, b}`), by concatenating each group's blocks. Trees already fused
    come back unchanged."""
    def fuse(node):
        out = {k: v for k, v in node.items() if not (k in PROJECTIONS and _is_adapter(v))}
        for members in target_groups(k for k in node if k in PROJECTIONS and _is_adapter(node[k])):
            out[group_name(members)] = {side: jnp.concatenate([node[m][side] for m in members], axis=-1)
                                        for side in ("a", "b")}
        return out

    return _map_parents(tree, PROJECTIONS.__contains__, fuse)


def split_layout(tree, cfg: ModelConfig, split=split_group):
    """The inverse of `fuse_layout`: fused groups -> one {a, b} per projection (output widths
    from `cfg`). `split(a, b, widths)` may be replaced, e.g. for abstract arrays."""
    shapes = projection_shapes(cfg)

    def unfuse(node):
        out = {k: v for k, v in node.items() if not (k.startswith(PREFIX) and _is_adapter(v))}
        for key, adapter in node.items():
            if key.startswith(PREFIX) and _is_adapter(adapter):
                members = group_members(key)
                parts = split(adapter["a"], adapter["b"], tuple(shapes[m][1] for m in members))
                out.update({m: {"a": a, "b": b} for m, (a, b) in zip(members, parts)})
        return out

    return _map_parents(tree, lambda k: k.startswith(PREFIX), unfuse)


def adapters_for_compute(variables: dict, cfg: ModelConfig) -> dict:
    """`variables` with the `lora` collection cast to the compute dtype. A train step calls it
    once, inside the differentiated function, so the float32 adapters of the state stay the
    optimizer's master weights while every layer reads ready-cast bf16 ones (no per-layer,
    per-use convert). Each use's gradient then sums in the compute dtype before the one cast
    back to float32, as a bf16 parameter's would."""
    if "lora" not in variables:
        return variables
    dtype = jnp.dtype(cfg.compute_dtype)
    return {**variables, "lora": jax.tree_util.tree_map(lambda x: x.astype(dtype), variables["lora"])}


def merge(params: dict, lora: dict, cfg: ModelConfig) -> dict:
    """Params with every adapter folded in: kernel + a_i @ b_i * alpha / rank (float32 math).
    Accepts the fused and the per-projection layout."""
    flat = traverse_util.flatten_dict(params)
    adapters = traverse_util.flatten_dict(fuse_layout(lora))
    scale = cfg.lora_alpha / cfg.lora_rank
    for key, a in adapters.items():
        if key[-1] != "a":
            continue
        members = group_members(key[-2])
        kernel_keys = [key[:-2] + (m, "kernel") for m in members]
        missing = [k for k in kernel_keys if k not in flat]
        if missing:
            raise KeyError(f"LoRA adapter {'/'.join(key[:-1])} has no base kernel {'/'.join(missing[0])}")
        widths = tuple(flat[k].shape[-1] for k in kernel_keys)
        for kernel_key, (a_i, b_i) in zip(kernel_keys, split_group(a, adapters[key[:-1] + ("b",)], widths)):
            kernel = flat[kernel_key]
            delta = jnp.einsum("...ir,...ro->...io", a_i.astype(jnp.float32), b_i.astype(jnp.float32)) * scale
            flat[kernel_key] = (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
