"""The pause vector of a soft_token "pause" model in an exported (Hugging Face) directory.

A model trained with `laser.soft_token="pause"` feeds one learned vector at each of its K-1
soft steps (`laser_jax.method.views.soft_step_input`). Its export keeps the transformers
weights a plain *ForCausalLM checkpoint and puts the vector beside them:

  HF_DIR/laser.json                  "soft_token": "pause" (absent: the paper's expected embedding)
  HF_DIR/laser_pause.safetensors     one tensor, "pause_embedding" [hidden_size]

Readers: `laser_jax.inference.load` (JAX), `laser_jax.inference.torch_encoder` and the
exported `laser_st.py` (PyTorch; it repeats the two names, being self-contained).
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from laser_jax.model.config import SOFT_TOKENS, ModelConfig
from laser_jax.model.decoder import LATENT, PAUSE
from laser_jax.model.hf_io import WeightsFileError, check_safetensors_file
from laser_jax.model.layers import dtype_of

PAUSE_FILE = "laser_pause.safetensors"
PAUSE_TENSOR = PAUSE  # "pause_embedding"
DEFAULT_SOFT_TOKEN = SOFT_TOKENS[0]  # "expected_embedding"
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def soft_token_of(meta: dict, model_dir: str) -> str:
    """laser.json's `soft_token` (the paper's expected embedding when absent).

    Raises:
      ValueError: naming laser.json when the value is not one of SOFT_TOKENS.
    """
    value = meta.get("soft_token", DEFAULT_SOFT_TOKEN)
    if value not in SOFT_TOKENS:
        raise ValueError(f"{os.path.join(model_dir, 'laser.json')}: soft_token {value!r} is not one of "
                         f"{SOFT_TOKENS}")
    return value


def write_pause(out_dir: str, latent: dict, dtype: str) -> None:
    """HF_DIR/laser_pause.safetensors from a model's `latent` collection, in `dtype`."""
    tensor = np.asarray(latent[PAUSE], np.float32).astype(_NP_DTYPES[dtype])
    save_file({PAUSE_TENSOR: np.ascontiguousarray(tensor)}, os.path.join(out_dir, PAUSE_FILE),
              metadata={"format": "pt"})


def read_pause(model_dir: str, cfg: ModelConfig) -> dict:
    """{"latent": {"pause_embedding": [D] in cfg's param dtype}} for a pause model, {} otherwise.

    Raises:
      FileNotFoundError: laser.json says "pause" but the file is missing.
      ValueError (WeightsFileError): the file is damaged, lacks the tensor or has another shape.
    """
    if cfg.soft_token != "pause":
        return {}
    path = os.path.join(model_dir, PAUSE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; {os.path.join(model_dir, 'laser.json')} says soft_token "
                                "'pause', whose learned vector this file holds (export the model again)")
    check_safetensors_file(path)
    with safe_open(path, framework="numpy") as f:
        if PAUSE_TENSOR not in f.keys():
            raise WeightsFileError(f"{path}: no tensor {PAUSE_TENSOR!r} (found: {sorted(f.keys())})")
        vector = f.get_tensor(PAUSE_TENSOR)
    if vector.shape != (cfg.hidden_size,):
        raise WeightsFileError(f"{path}: {PAUSE_TENSOR} has shape {list(vector.shape)}, the model's hidden "
                               f"size is {cfg.hidden_size}")
    return {LATENT: {PAUSE: jnp.asarray(np.asarray(vector, np.float32), dtype_of(cfg.param_dtype))}}
