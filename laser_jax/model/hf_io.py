"""Hugging Face checkpoints <-> decoder parameters, through one name table.

Import reads `model.safetensors` or sharded `model-0000x-of-0000y.safetensors` (with
`model.safetensors.index.json`), bf16/f16/f32. Every missing, unexpected or mis-shaped
tensor is reported together in one `CheckpointMismatchError`. Each device shard of each
parameter is read straight from the files (`safe_open(...).get_slice`) by
`jax.make_array_from_callback`, so a large model is placed onto its target sharding
without ever holding two full host copies.

Export is the inverse: config.json, (sharded when large) safetensors and the tokenizer,
loadable by `transformers.AutoModelForCausalLM.from_pretrained`, LoRA merged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from laser_jax.model import lora as lora_lib
from laser_jax.model.config import ModelConfig, from_hf_config, to_hf_config
from laser_jax.model.decoder import abstract_variables  # noqa: F401 (re-exported)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model config (lists every problem)."""


class WeightsFileError(ValueError):
    """A safetensors file that cannot be read (truncated, damaged); names the file."""


def check_safetensors_file(path: str) -> None:
    """Raise WeightsFileError when `path` is not a whole safetensors file: its header must
    parse and the file must be as long as the header's tensors need (an interrupted download
    is caught here, at set-up, rather than when the tensors are read)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len > size:
                raise ValueError(f"its header needs {8 + header_len} bytes")
            header = json.loads(f.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise WeightsFileError(f"{path}: not a readable safetensors file ({size} bytes: {e}); "
                               "an interrupted download? Download it again") from None
    if 8 + header_len + end > size:
        raise WeightsFileError(f"{path}: truncated: {size} bytes, its tensors need {8 + header_len + end}; "
                               "an interrupted download? Download it again")


@dataclasses.dataclass(frozen=True)
class Entry:
    """How one parameter leaf maps to HF tensors.

    hf: the HF tensor name; for layer-stacked leaves it contains `{i}`.
    stacked: the leaf has a leading layer axis built from per-layer tensors.
    transpose: HF stores the [out, in] transpose of our [in, out] kernel.
    """

    hf: str
    stacked: bool
    transpose: bool


def name_table(cfg: ModelConfig) -> Dict[Tuple[str, ...], Entry]:
    """Parameter path (inside the `params` collection) -> Entry, for this config."""
    table = {("embed_tokens", "embedding"): Entry("model.embed_tokens.weight", False, False),
             ("norm", "scale"): Entry("model.norm.weight", False, False)}
    if not cfg.tie_word_embeddings:
        table[("lm_head", "kernel")] = Entry("lm_head.weight", False, True)
    layer = "model.layers.{i}."
    table[("layers", "input_layernorm", "scale")] = Entry(layer + "input_layernorm.weight", True, False)
    table[("layers", "post_attention_layernorm", "scale")] = Entry(
        layer + "post_attention_layernorm.weight", True, False)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table[("layers", "self_attn", proj, "kernel")] = Entry(layer + f"self_attn.{proj}.weight", True, True)
        if cfg.attention_bias and proj != "o_proj":
            table[("layers", "self_attn", proj, "bias")] = Entry(layer + f"self_attn.{proj}.bias", True, False)
    if cfg.qk_norm:
        for norm in ("q_norm", "k_norm"):
            table[("layers", "self_attn", norm, "scale")] = Entry(layer + f"self_attn.{norm}.weight", True, False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        table[("layers", "mlp", proj, "kernel")] = Entry(layer + f"mlp.{proj}.weight", True, True)
    return table


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
class SafetensorsDir:
    """Tensor name -> (file, shape) for a single-file or sharded safetensors checkpoint."""

    def __init__(self, model_dir: str):
        self.dir = model_dir
        index = os.path.join(model_dir, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(model_dir, SINGLE_FILE)):
            files = [SINGLE_FILE]
        else:
            found = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
            raise FileNotFoundError(
                f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} (found: {found[:10]})")
        self.files: Dict[str, str] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        for fname in files:
            path = os.path.join(model_dir, fname)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: listed in {INDEX_FILE} but missing")
            check_safetensors_file(path)
            try:
                with safe_open(path, framework="numpy") as f:
                    for name in f.keys():
                        self.files[name] = path
                        self.shapes[name] = tuple(f.get_slice(name).get_shape())
            except Exception as e:  # safetensors' SafetensorError: a damaged file
                raise WeightsFileError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None

    def read(self, name: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        """The tensor (or `tensor[index]`) as numpy, reading only that part from disk."""
        with safe_open(self.files[name], framework="numpy") as f:
            part = f.get_slice(name)
            return np.asarray(part[index] if index else part[:])


def _check(ckpt: SafetensorsDir, cfg: ModelConfig, skeleton: dict) -> None:
    table = name_table(cfg)
    problems: List[str] = []
    expected = set()
    for path, entry in table.items():
        leaf = _get(skeleton, path)
        if leaf is None:
            problems.append(f"model has no parameter {'/'.join(path)}")
            continue
        shape = leaf.shape[1:] if entry.stacked else leaf.shape
        want = tuple(reversed(shape)) if entry.transpose else tuple(shape)
        names = [entry.hf.format(i=i) for i in range(cfg.num_hidden_layers)] if entry.stacked else [entry.hf]
        for name in names:
            expected.add(name)
            if name not in ckpt.shapes:
                problems.append(f"missing tensor {name} (expected shape {list(want)})")
            elif ckpt.shapes[name] != want:
                problems.append(f"mis-shaped tensor {name}: checkpoint {list(ckpt.shapes[name])}, "
                                f"model expects {list(want)}")
    tolerated = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    tolerated |= {n for n in ckpt.shapes if n.endswith("rotary_emb.inv_freq")}
    for name in sorted(set(ckpt.shapes) - expected - tolerated):
        problems.append(f"unexpected tensor {name} {list(ckpt.shapes[name])}")
    if problems:
        raise CheckpointMismatchError(
            f"{ckpt.dir}: checkpoint does not match the {cfg.family} config "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def _get(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _leaf_callback(ckpt: SafetensorsDir, entry: Entry, shape, dtype) -> Callable:
    """callback(index) -> numpy block of the leaf, read from disk for that block only."""
    np_dtype = np.dtype(dtype)

    def read2(name, idx):
        if entry.transpose:
            return ckpt.read(name, tuple(reversed(idx))).T
        return ckpt.read(name, idx)

    def callback(index):
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if not entry.stacked:
            return read2(entry.hf, index).astype(np_dtype)
        layers = range(*index[0].indices(shape[0]))
        return np.stack([read2(entry.hf.format(i=i), index[1:]) for i in layers]).astype(np_dtype)

    return callback


def load_params(model_dir: str, cfg: ModelConfig, shardings=None) -> dict:
    """Read HF weights into the decoder's `params` collection.

    Args:
      model_dir: directory with config.json and safetensors.
      cfg: the model config (e.g. `from_hf_config(model_dir, ...)`); param_dtype decides
        the stored dtype.
      shardings: optional pytree of `jax.sharding.Sharding` matching `params`; default:
        everything on the first local device.

    Returns:
      The `params` collection (plain arrays, no partitioning boxes).

    Raises:
      CheckpointMismatchError naming every missing, unexpected or mis-shaped tensor.
    """
    return load_tensors(SafetensorsDir(model_dir), cfg, shardings)


def load_tensors(ckpt, cfg: ModelConfig, shardings=None) -> dict:
    """`load_params` from any tensor source with `SafetensorsDir`'s interface: `dir` (named
    in errors), `shapes` (HF name -> shape) and `read(name, index)` (e.g. a GGUF file,
    `gguf_io.GGUFTensors`)."""
    skeleton = abstract_variables(cfg.replace(lora_rank=0))["params"]
    _check(ckpt, cfg, skeleton)
    table = name_table(cfg)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def build(path, leaf):
        key = tuple(p.key for p in path)
        sharding = _get(shardings, key) if shardings is not None else default
        return jax.make_array_from_callback(
            leaf.shape, sharding, _leaf_callback(ckpt, table[key], leaf.shape, leaf.dtype))

    return jax.tree_util.tree_map_with_path(build, skeleton)


def load_pretrained(model_dir: str, shardings=None, **overrides):
    """(ModelConfig, params) from an HF directory; `overrides` set run-time options."""
    cfg = from_hf_config(model_dir, **overrides)
    return cfg, load_params(model_dir, cfg, shardings)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
def hf_tensors(params: dict, cfg: ModelConfig, dtype: str = "bfloat16") -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (HF name, numpy tensor) one at a time (fetching each leaf to host once)."""
    np_dtype = _NP_DTYPES[dtype]
    for path, entry in name_table(cfg).items():
        leaf = np.asarray(jax.device_get(_get(params, path)))
        if entry.stacked:
            for i in range(leaf.shape[0]):
                t = leaf[i].T if entry.transpose else leaf[i]
                yield entry.hf.format(i=i), np.ascontiguousarray(t).astype(np_dtype)
        else:
            t = leaf.T if entry.transpose else leaf
            yield entry.hf, np.ascontiguousarray(t).astype(np_dtype)


def save_pretrained(out_dir: str, params: dict, cfg: ModelConfig, tokenizer=None,
                    lora: Optional[dict] = None, dtype: str = "bfloat16",
                    max_shard_bytes: int = 5 * 2 ** 30) -> str:
    """Write an HF checkpoint (config, safetensors, tokenizer); LoRA is merged first.

    Shards are written as they fill (`max_shard_bytes` each), with an index file when
    there is more than one, so only one shard is ever held on the host.
    """
    if lora:
        params = lora_lib.merge(params, lora, cfg)
    os.makedirs(out_dir, exist_ok=True)
    shards: List[Dict[str, np.ndarray]] = [{}]
    sizes = [0]
    written: List[Tuple[str, List[str]]] = []

    def flush():
        name = f"model-{len(written) + 1:05d}.safetensors"
        save_file(shards[-1], os.path.join(out_dir, name), metadata={"format": "pt"})
        written.append((name, list(shards[-1])))
        shards[-1] = {}
        sizes[-1] = 0

    for name, tensor in hf_tensors(params, cfg, dtype):
        if sizes[-1] and sizes[-1] + tensor.nbytes > max_shard_bytes:
            flush()
        shards[-1][name] = tensor
        sizes[-1] += tensor.nbytes
    if shards[-1]:
        flush()
    _finalise_shards(out_dir, written)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(to_hf_config(cfg, torch_dtype=dtype), f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _finalise_shards(out_dir: str, written: List[Tuple[str, List[str]]]) -> None:
    """Rename shards to HF's names and write the index (or a single model.safetensors)."""
    for stale in os.listdir(out_dir):
        if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?", stale):
            os.remove(os.path.join(out_dir, stale))
    if len(written) == 1:
        os.replace(os.path.join(out_dir, written[0][0]), os.path.join(out_dir, SINGLE_FILE))
        return
    weight_map, total = {}, 0
    for i, (tmp, names) in enumerate(written):
        final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        os.replace(os.path.join(out_dir, tmp), os.path.join(out_dir, final))
        total += os.path.getsize(os.path.join(out_dir, final))
        weight_map.update({n: final for n in names})
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
