"""Find and load a model for inference: a training workdir, a checkpoint step, or a Hugging
Face directory, always as one `LoadedModel`.

On disk:
  WORKDIR/checkpoints/<step>/{state, data, meta}   a training run's checkpoints (written by
                                                   `laser_jax.train.checkpoint`); `meta` holds
                                                   `make_meta`'s JSON, read by `read_meta`
  WORKDIR/tokenizer                                the run's tokenizer
  HF_DIR/{config.json, *.safetensors, tokenizer}   a Hugging Face model; `laser.json` beside
                                                   them (written by `laser_jax.export_hf`) holds
                                                   the text format and K it was trained with;
                                                   without it the directory is foreign and gets
                                                   the format `inference.text_format` chooses
  FILE.gguf                                        a llama.cpp GGUF file (weights, config and
                                                   tokenizer in one file; model/gguf_io.py)
  HF_DIR/laser_pause.safetensors                   a soft_token "pause" model's vector (pause_file)

The training side writes this layout (CHECKPOINTS, TOKENIZER, make_meta) and this module
reads it, so both are defined here: train may import inference, never the other way.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, List, Optional, Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from laser_jax.storage import DamagedFileError, read_json, verify_manifest
from laser_jax.storage import load_tokenizer as load_tokenizer_files
from laser_jax.data.formatting import TextFormat
from laser_jax.inference import lora_layout, pause_file
from laser_jax.inference.quiet import quiet_loading
from laser_jax.inference.text_format import FOREIGN_NUM_THINKING_STEPS, ORIGIN_METADATA, hf_dir_format
from laser_jax.model import gguf_io, hf_io
from laser_jax.model.config import ModelConfig, RopeScaling, from_hf_config, resolve_attention_impl
from laser_jax.model.decoder import LATENT, abstract_variables
from laser_jax.model.layers import dtype_of

CHECKPOINTS = "checkpoints"  # WORKDIR/checkpoints/<step>/
TOKENIZER = "tokenizer"  # WORKDIR/tokenizer/
LASER_META = "laser.json"  # HF_DIR/laser.json

log = logging.getLogger("laser_jax")


class CheckpointLoadError(ValueError):
    """Checkpoints exist under a directory but none of them loads (a ValueError, so the
    command-line tools report it as bad input: one line, exit status 2)."""


@dataclasses.dataclass
class LoadedModel:
    cfg: ModelConfig
    variables: dict
    tokenizer: Any
    text_format: TextFormat
    num_thinking_steps: int
    # ORIGIN_METADATA when the model says its format (checkpoint meta, laser.json); else
    # where laser_jax.inference.text_format took it from (ORIGIN_AUTHORS, ORIGIN_SPEC)
    format_origin: str = ORIGIN_METADATA


def load_tokenizer(path: str):
    """AutoTokenizer from `path`; FileNotFoundError when the directory has none, a
    DamagedFileError naming a damaged file; a GGUF file's own tokenizer (transformers builds
    it from the file's metadata)."""
    if gguf_io.is_gguf(path):
        return gguf_io.load_tokenizer(path)
    return load_tokenizer_files(path)


def require_intact(directory: str, only=None, fix: str = "") -> None:
    """A model directory a stage of laser_jax wrote (its manifest.json) must be as written:
    else one DamagedFileError naming the first damaged file (`fix`: what to do). A directory
    without a manifest (downloaded, or a run that has not finished) is read as it is."""
    damaged = verify_manifest(directory, only).damaged
    if damaged:
        more = f" (and {len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
        raise DamagedFileError(f"{damaged[0]}{more}; {fix or 'write the directory again'}")


# ------------------------------------------------------------------ Hugging Face directories
def read_laser_meta(path: str) -> dict:
    meta_path = os.path.join(path, LASER_META)
    if not os.path.exists(meta_path):
        return {}
    return read_json(meta_path)


def write_laser_meta(path: str, text_format: TextFormat, num_thinking_steps: int,
                     soft_token: str = pause_file.DEFAULT_SOFT_TOKEN) -> None:
    """laser.json; `soft_token` is written only when it is not the paper's (pause_file)."""
    meta = {"num_thinking_steps": num_thinking_steps, "query_template": text_format.query_template,
            "chat_template": text_format.chat_template}
    if soft_token != pause_file.DEFAULT_SOFT_TOKEN:
        meta["soft_token"] = soft_token
    with open(os.path.join(path, LASER_META), "w") as f:
        json.dump(meta, f, indent=2)


def load_hf_dir(path: str, dtype: str) -> LoadedModel:
    require_intact(path, fix="export or copy the model again")  # issue 27: e.g. written by export_hf
    meta = read_laser_meta(path)
    cfg = from_hf_config(path, param_dtype=dtype, compute_dtype=dtype,
                         attention_impl=resolve_attention_impl("auto", dtype),
                         soft_token=pause_file.soft_token_of(meta, path))
    tokenizer = load_tokenizer(path)
    params = hf_io.load_params(path, cfg)
    has_meta = os.path.exists(os.path.join(path, LASER_META))
    fmt, steps, origin = hf_dir_format(meta if has_meta else None, cfg.family, tokenizer)  # no laser.json: foreign
    return LoadedModel(cfg, {"params": params, **pause_file.read_pause(path, cfg)}, tokenizer, fmt, steps, origin)


def load_gguf_file(path: str, dtype: str) -> LoadedModel:
    """A GGUF file: its weights dequantised to `dtype`, its tokenizer, K = 3, and chat
    wrapping on when the file carries a chat template (an instruction-tuned model's own
    format; LaserEncoder.from_pretrained(..., chat_template=False) turns it off)."""
    cfg = gguf_io.config_from_gguf(path, param_dtype=dtype, compute_dtype=dtype,
                                   attention_impl=resolve_attention_impl("auto", dtype))
    tokenizer = gguf_io.load_tokenizer(path)
    params = gguf_io.load_params(path, cfg)
    fmt = TextFormat(chat_template=bool(getattr(tokenizer, "chat_template", None)))
    return LoadedModel(cfg, {"params": params}, tokenizer, fmt, FOREIGN_NUM_THINKING_STEPS)


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


def checkpoint_candidates(path: str) -> List[str]:
    """The checkpoint step directories meant by `path`, newest first: a step directory
    itself (only it), or a workdir / its `checkpoints` directory (all complete steps, so
    that a damaged newest one can fall back to the one before); [] if none is found."""
    if os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "meta")):
        return [path]
    for directory in (os.path.join(path, CHECKPOINTS), path):
        steps = step_dirs(directory)
        if steps:
            return [os.path.join(directory, s) for s in reversed(steps)]
    return []


def find_checkpoint(path: str) -> Optional[str]:
    """The checkpoint step directory meant by `path`: a workdir (its newest checkpoint),
    its `checkpoints` directory, or a step directory itself; None if none is found."""
    found = checkpoint_candidates(path)
    return found[0] if found else None


def read_meta(step_dir: str) -> dict:
    path = os.path.join(step_dir, "meta", "metadata")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{step_dir}: checkpoint has no meta item ({path})")
    return read_json(path)


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
    if LATENT in abstract:  # the pause vector trains in both modes (train/step.py split_variables)
        saved["trainable"][LATENT] = abstract[LATENT]
    # Shapes come from the model; stored dtypes may differ (frozen base in compute dtype).
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), saved)
    state_dir = os.path.abspath(os.path.join(step_dir, "state"))  # Orbax wants an absolute path
    old_layout = lora and lora_layout.stored_per_projection(state_dir)  # LoRA saved before issue 22
    target = lora_layout.per_projection_item(item, cfg) if old_layout else item
    restore_args = jax.tree_util.tree_map(
        lambda x: ocp.ArrayRestoreArgs(sharding=sharding, dtype=x.dtype), target)
    with quiet_loading(), ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    if old_layout:
        restored = lora_layout.fuse_restored(restored, item)
    pdt = dtype_of(cfg.param_dtype)
    variables = {**restored["frozen"], **restored["trainable"]}
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, pdt), variables)


def _checkpoint_tokenizer(step_dir: str):
    return load_tokenizer(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(step_dir))), TOKENIZER))


def _load_step(step_dir: str, dtype: str, tokenizer) -> LoadedModel:
    meta = read_meta(step_dir)
    cfg = model_config_from_meta(meta, dtype)
    variables = restore_variables(step_dir, cfg)
    fmt = TextFormat(**meta["text_format"])
    return LoadedModel(cfg, variables, tokenizer, fmt, int(meta["num_thinking_steps"]))


def load_checkpoint(step_dir: str, dtype: str) -> LoadedModel:
    """A checkpoint step directory (its tokenizer is WORKDIR/tokenizer)."""
    step_dir = os.path.abspath(step_dir)
    return _load_step(step_dir, dtype, _checkpoint_tokenizer(step_dir))


def _failure(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _require_intact_checkpoint(candidates: Sequence[str]) -> None:
    """A finished run's workdir (its manifest.json, train/run_files.py) is checked where a load
    reads it, the tokenizer and the newest candidate step: a damaged file is refused, never
    replaced by an older step (that would be another model than the run's)."""
    step_dir = candidates[0]
    workdir = os.path.dirname(os.path.dirname(step_dir))
    if os.path.basename(os.path.dirname(step_dir)) != CHECKPOINTS:
        return
    rebuild = f"rerun the run's training command on {workdir} to rebuild it"
    require_intact(workdir, [TOKENIZER], rebuild)
    earlier = f", or use an earlier step (--model={candidates[1]})" if len(candidates) > 1 else ""
    require_intact(workdir, [f"{CHECKPOINTS}/{os.path.basename(step_dir)}"], rebuild + earlier)


def load_newest_checkpoint(candidates: Sequence[str], dtype: str) -> LoadedModel:
    """The newest of `candidates` (step directories, newest first) that loads, as training
    resumes from the newest intact checkpoint: each one that fails is skipped with a
    warning naming its step.

    Raises:
      CheckpointLoadError: none of them loads (the message names the directory and each
        step's failure).
    """
    candidates = [os.path.abspath(c) for c in candidates]
    _require_intact_checkpoint(candidates)
    tokenizer = _checkpoint_tokenizer(candidates[0])  # one per workdir; its absence is not damage
    failed = []
    for i, step_dir in enumerate(candidates):
        try:
            loaded = _load_step(step_dir, dtype, tokenizer)
        except Exception as e:  # a truncated or otherwise damaged checkpoint: try the one before
            failed.append((os.path.basename(step_dir), _failure(e)))
            if i + 1 < len(candidates):
                log.warning("checkpoint step %s in %s could not be loaded (%s); using the previous one",
                            failed[-1][0], os.path.dirname(step_dir), failed[-1][1])
            continue
        if failed:
            log.warning("loaded checkpoint step %s of %s (skipped the unreadable step(s) %s)",
                        os.path.basename(step_dir), os.path.dirname(step_dir),
                        ", ".join(s for s, _ in failed))
        return loaded
    where = os.path.dirname(candidates[0]) if len(candidates) > 1 else candidates[0]
    raise CheckpointLoadError(f"{where}: no checkpoint could be loaded ("
                              + "; ".join(f"step {s}: {r}" for s, r in failed) + ")")


# ---------------------------------------------------------------------------------- any path
def load_for_inference(path: str, dtype: str) -> LoadedModel:
    """Load an HF directory, a training workdir (latest checkpoint), a checkpoint step or a
    GGUF file.

    Args:
      path: the directory (or FILE.gguf).
      dtype: parameter and compute dtype ("float32", "bfloat16", "float16").

    A relative `path` is taken from the current directory. A workdir whose newest
    checkpoint is damaged loads the newest one that restores, with a warning naming the
    skipped step.

    Raises:
      FileNotFoundError: `path` is none of these.
      CheckpointLoadError: checkpoints exist but none loads.
      gguf_io.GGUFError: a damaged, truncated or unsupported GGUF file.
    """
    if gguf_io.is_gguf(path):
        return load_gguf_file(os.path.abspath(path), dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model directory")
    path = os.path.abspath(path)
    candidates = checkpoint_candidates(path)
    if candidates:
        return load_newest_checkpoint(candidates, dtype)
    if os.path.isfile(os.path.join(path, "config.json")):
        return load_hf_dir(path, dtype)
    raise FileNotFoundError(
        f"{path}: neither a Hugging Face model directory (no config.json) nor a laser_jax "
        "training workdir or checkpoint")
