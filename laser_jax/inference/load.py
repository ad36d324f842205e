"""Find and load a model for inference: a Hugging Face directory or a training checkpoint.

An HF directory may carry `laser.json` (written by `laser_jax.export_hf`) with the text
format and number of thinking steps the model was trained with.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from laser_jax.data.formatting import TextFormat

LASER_META = "laser.json"


@dataclasses.dataclass
class LoadedModel:
    cfg: Any  # ModelConfig
    variables: dict
    tokenizer: Any
    text_format: TextFormat
    num_thinking_steps: int


def load_tokenizer(path: str):
    """AutoTokenizer from `path`, with a clear error when the directory has none."""
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, n)) for n in names):
        raise FileNotFoundError(f"{path}: no tokenizer files ({', '.join(names)}); save the tokenizer "
                                "into the model directory (tokenizer.save_pretrained)")
    return AutoTokenizer.from_pretrained(path)


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
    from laser_jax.model import hf_io
    from laser_jax.model.config import from_hf_config

    from laser_jax.model.config import resolve_attention_impl

    cfg = from_hf_config(path, param_dtype=dtype, compute_dtype=dtype,
                         attention_impl=resolve_attention_impl("auto", dtype))
    tokenizer = load_tokenizer(path)
    params = hf_io.load_params(path, cfg)
    meta = read_laser_meta(path)
    fmt = TextFormat(**{k: meta[k] for k in ("query_template", "chat_template") if k in meta})
    return LoadedModel(cfg, {"params": params}, tokenizer, fmt, int(meta.get("num_thinking_steps", 3)))


def load_for_inference(path: str, dtype: str) -> LoadedModel:
    """Load an HF directory, a training workdir (latest checkpoint) or a checkpoint step."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model directory")
    from laser_jax.train import checkpoint

    found = checkpoint.find_checkpoint(path)
    if found is None and os.path.isfile(os.path.join(path, "config.json")):
        return load_hf_dir(path, dtype)
    if found is None:
        raise FileNotFoundError(
            f"{path}: neither a Hugging Face model directory (no config.json) nor a laser_jax "
            "training workdir or checkpoint")
    return checkpoint.load_for_inference(found, dtype)
