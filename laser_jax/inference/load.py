"""Find and load a model for inference: a training workdir, a checkpoint step, or a Hugging
Face directory, always as one `LoadedModel`.

On disk:
  WORKDIR/checkpoints/<step>/{state, data, meta}   a training run's checkpoints (written by
                                                   `laser_jax.train.checkpoint`); `meta` holds
                                                   `make_meta`'s JSON, read by `read_meta`
  WORKDIR/tokenizer                                the run's tokenizer
  HF_DIR/{config.json, *.safetensors, tokenizer}   a Hugging Face model; `laser.json` beside
                                                   them (written by `laser_jax.export_hf`) holds
                                                   the text format and K it was trained with

The training side writes this layout (CHECKPOINTS, TOKENIZER, make_meta) and this module
reads it, so both are defined here: train may import inference, never the other way.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from transformers import AutoTokenizer

from laser_jax.data.formatting import TextFormat
from laser_jax.model import hf_io
from laser_jax.model.config import ModelConfig, RopeScaling, from_hf_config, resolve_attention_impl
from laser_jax.model.decoder import abstract_variables
from laser_jax.model.layers import dtype_of

CHECKPOINTS = "checkpoints"  # WORKDIR/checkpoints/<step>/
TOKENIZER = "tokenizer"  # WORKDIR/tokenizer/
LASER_META = "laser.json"  # HF_DIR/laser.json
DEFAULT_NUM_THINKING_STEPS = 3  # K of an HF directory without laser.json (the spec's)


@dataclasses.dataclass
class LoadedModel:
    cfg: ModelConfig
    variables: dict
    tokenizer: Any
    text_format: TextFormat
    num_thinking_steps: int


def load_tokenizer(path: str):
    """AutoTokenizer from `path`, with a clear error when the directory has none."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, n)) for n in names):
        raise FileNotFoundError(f"{path}: no tokenizer files ({', '.join(names)}); save the tokenizer "
                                "into the model directory (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(path)


# ------------------------------------------------------------------ Hugging Face directories
def read_laser_meta(path: str) -> dict:
    meta_path = os.path.join(path, LASER_META)
    if not os.path.exists(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


def write_laser_meta(path: str, text_format: TextFormat, num_thinking_steps: int) -> None:
    with open(os.path.join(path, LASER_META), "w") as f:
        json.dump({"num_thinking_steps": num_thinking_steps, "query_template": text_format.query_template,
                   "chat_template": text_format.chat_template}, f, indent=2)


def load_hf_dir(path: str, dtype: str) -> LoadedModel:
    cfg = from_hf_config(path, param_dtype=dtype, compute_dtype=dtype,
                         attention_impl=resolve_attention_impl("auto", dtype))
    tokenizer = load_tokenizer(path)
    params = hf_io.load_params(path, cfg)
    meta = read_laser_meta(path)
    fmt = TextFormat(**{k: meta[k] for k in ("query_template", "chat_template") if k in meta})
    steps = int(meta.get("num_thinking_steps", DEFAULT_NUM_THINKING_STEPS))
    return LoadedModel(cfg, {"params": params}, tokenizer, fmt, steps)


# ---------------------------------------------------------------------- training checkpoints
def make_meta(run_config, model_cfg, text_format, num_thinking_steps: int, eos_id: int) -> dict:
    """The `meta` item of a checkpoint: run config, model config, text format, K, EOS id."""
    return {"run": json.loads(run_config.to_json()), "model": dataclasses.asdict(model_cfg),
            "text_format": dataclasses.asdict(text_format), "num_thinking_steps": int(num_thinking_steps),
            "eos_id": int(eos_id)}


def step_dirs(directory: str) -> List[str]:
    """Names of the complete checkpoint steps in `directory` (those with a `state`), oldest first."""
    if not os.path.isdir(directory):
        return []
    steps = [d for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state"))]
    return sorted(steps, key=int)


def find_checkpoint(path: str) -> Optional[str]:
    """The checkpoint step directory meant by `path`: a workdir (its newest checkpoint),
    its `checkpoints` directory, or a step directory itself; None if none is found."""
    if os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "meta")):
        return path
    for directory in (os.path.join(path, CHECKPOINTS), path):
        steps = step_dirs(directory)
        if steps:
            return os.path.join(directory, steps[-1])
    return None


def read_meta(step_dir: str) -> dict:
    path = os.path.join(step_dir, "meta", "metadata")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{step_dir}: checkpoint has no meta item ({path})")
    with open(path) as f:
        return json.load(f)


def model_config_from_meta(meta: dict, dtype: Optional[str] = None) -> ModelConfig:
    fields = dict(meta["model"])
    if fields.get("rope_scaling"):
        fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    fields["lora_targets"] = tuple(fields.get("lora_targets", ()))
    cfg = ModelConfig(**fields)
    if dtype:
        cfg = cfg.replace(param_dtype=dtype, compute_dtype=dtype)
    # The attention kernel is chosen for the machine that runs the model now (a run trained
    # with cuDNN on a GPU may be evaluated on a CPU or TPU).
    return cfg.replace(attention_impl=resolve_attention_impl("auto", cfg.compute_dtype))


def restore_variables(step_dir: str, cfg: ModelConfig) -> dict:
    """{"params": ..., "lora": ...} of a checkpoint (no optimizer state), cast to cfg's
    param dtype, on the default device."""
    abstract = abstract_variables(cfg)
    saved = {"trainable": {}, "frozen": {}}
    lora = "lora" in abstract
    saved["trainable"] = {"lora": abstract["lora"]} if lora else {"params": abstract["params"]}
    saved["frozen"] = {"params": abstract["params"]} if lora else {}
    # Shapes come from the model; stored dtypes may differ (frozen base in compute dtype).
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), saved)
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype), item)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    pdt = dtype_of(cfg.param_dtype)
    variables = {**restored["frozen"], **restored["trainable"]}
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, pdt), variables)


def load_checkpoint(step_dir: str, dtype: str) -> LoadedModel:
    """A checkpoint step directory (its tokenizer is WORKDIR/tokenizer)."""
    meta = read_meta(step_dir)
    cfg = model_config_from_meta(meta, dtype)
    tok_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(step_dir))), TOKENIZER)
    tokenizer = load_tokenizer(tok_dir)
    variables = restore_variables(step_dir, cfg)
    fmt = TextFormat(**meta["text_format"])
    return LoadedModel(cfg, variables, tokenizer, fmt, int(meta["num_thinking_steps"]))


# ---------------------------------------------------------------------------------- any path
def load_for_inference(path: str, dtype: str) -> LoadedModel:
    """Load an HF directory, a training workdir (latest checkpoint) or a checkpoint step.

    Args:
      path: the directory.
      dtype: parameter and compute dtype ("float32", "bfloat16", "float16").

    Raises:
      FileNotFoundError: `path` is none of these.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model directory")
    found = find_checkpoint(path)
    if found is not None:
        return load_checkpoint(found, dtype)
    if os.path.isfile(os.path.join(path, "config.json")):
        return load_hf_dir(path, dtype)
    raise FileNotFoundError(
        f"{path}: neither a Hugging Face model directory (no config.json) nor a laser_jax "
        "training workdir or checkpoint")
