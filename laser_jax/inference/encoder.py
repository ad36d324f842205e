"""LaserEncoder: texts -> L2-normalised latent-view embeddings as numpy.

    from laser_jax import LaserEncoder
    enc = LaserEncoder.from_pretrained("path/to/hf_dir_or_workdir", dtype="bfloat16")
    q = enc.encode_queries(["why is the sky blue?"], instruction="Given a question, ...")
    d = enc.encode_documents(["Rayleigh scattering ..."])
    scores = q @ d.T

Texts are sorted by length, cut into batches of `batch_size` rows (the last one padded
with empty rows), left padded to the width bucket of the batch's longest text
(`laser_jax.data.tokenize.batch_width`: 16, 32, 48, 64, then powers of two, capped at
max_length), so a long corpus compiles one program per bucket and short texts stay short
whatever max_length is; rows come back in input order whatever the batching.
`LaserEncoder.compiled_widths` lists the widths its batches have had.

The parts, for other views of the model (`laser_jax.experiments.explicit_upper`):
  encode_latent(model, variables, ids, mask, num_steps)   the jitted latent view ([B, D])
  iter_batches(tokenizer, texts, encode_fn, ...)          the batching above, over any
                                                          jitted encode_fn(ids, mask) -> [B, D]
  encode_texts(tokenizer, texts, encode_fn, dim, ...)     all rows, in input order
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from laser_jax.data.formatting import TextFormat, chat_wrap, format_query
from laser_jax.data.tokenize import INFERENCE_BUCKETING, Bucketing, left_pad, pad_token_id, tokenize_texts
from laser_jax.inference.load import load_for_inference
from laser_jax.inference.text_format import announce, apply_overrides, check_overrides, has_chat_template
from laser_jax.method.views import check_soft_token_variables, latent_view, resolve_num_thinking_steps
from laser_jax.model.config import ModelConfig
from laser_jax.model.decoder import Decoder

# encode_fn(ids [B, T] int32, mask [B, T] int32) -> embeddings [B, D]
EncodeFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_num_thinking_steps_flag(value: Optional[int]) -> Optional[int]:
    """A command line's --num_thinking_steps, checked before any work: None (the model's
    own K) or a K >= 1 (`resolve_num_thinking_steps`); ValueError naming the flag otherwise."""
    if value is None:
        return None
    try:
        return resolve_num_thinking_steps(value, value)
    except ValueError as e:
        raise ValueError(f"--num_thinking_steps={value}: {e}") from None


def check_positive(**values) -> None:
    """ValueError naming the first of `values` (flag name = value) that is not an integer
    >= 1, e.g. check_positive(batch_size=0) -> "--batch_size=0 must be an integer >= 1";
    None values (a default) pass."""
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"--{name}={value} must be an integer >= 1")


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def check_dtype(dtype: str) -> None:
    """ValueError for a parameter/compute dtype this machine cannot run: float16 on a CPU
    (XLA's CPU backend has no float16 matrix product with float32 accumulation)."""
    if dtype == "float16" and jax.default_backend() == "cpu":
        raise ValueError("dtype float16 does not run on a CPU (XLA's CPU backend has no float16 matrix "
                         "product accumulating in float32); use float32 or bfloat16 here (float16 is the "
                         "LaSER authors' GPU setting)")


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def encode_latent(model: Decoder, variables, ids, mask, num_steps: int):
    """Latent-view embeddings [B, D] float32 of a left-padded batch (one compile per model
    config, K and batch shape: a Decoder is hashed by its frozen config)."""
    emb, _ = latent_view(model, variables, ids, mask, num_steps)
    return emb


def iter_batches(tokenizer, texts: Sequence[str], encode_fn: EncodeFn, *, max_length: int = 512,
                 batch_size: int = 32, bucketing: Bucketing = INFERENCE_BUCKETING
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices into `texts`, float32 embeddings) batch by batch, longest first.

    Args:
      tokenizer: the model's tokenizer (texts are tokenized as given, right truncated).
      texts: the formatted texts.
      encode_fn: (ids, mask) -> [B, D], e.g. `functools.partial(encode_latent, model,
        variables, num_steps=K)`; called on batches of exactly `batch_size` rows (the last
        one padded with empty rows) whose width is the length bucket of its longest row.
      max_length: truncation length in tokens.
      batch_size: rows per call.
      bucketing: how batch widths are chosen.
    """
    check_positive(batch_size=batch_size, max_length=max_length)
    rows = tokenize_texts(tokenizer, list(texts), max_length)
    order = np.argsort([-len(r) for r in rows], kind="stable")
    pad = pad_token_id(tokenizer)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [rows[i] for i in idx] + [[]] * (batch_size - len(idx))
        width = bucketing.length(max(len(r) for r in batch), max_length)
        ids, mask = left_pad(batch, width, pad)
        emb = encode_fn(jnp.asarray(ids), jnp.asarray(mask))
        yield idx, np.asarray(jax.device_get(emb), np.float32)[:len(idx)]


def encode_texts(tokenizer, texts: Sequence[str], encode_fn: EncodeFn, dim: int, *,
                 show_progress_bar: bool = False, desc: str = "encode", **batching) -> np.ndarray:
    """float32 [N, dim]: every text through `iter_batches(..., **batching)`, in input order;
    with `show_progress_bar` a tqdm bar (texts) on stderr."""
    out = np.zeros((len(texts), dim), np.float32)
    with tqdm(total=len(texts), unit="text", desc=desc, file=sys.stderr, dynamic_ncols=True,
              disable=not show_progress_bar) as bar:
        for idx, emb in iter_batches(tokenizer, texts, encode_fn, **batching):
            out[idx] = emb
            bar.update(len(idx))
    return out


class LaserEncoder:
    """Latent-view encoder over one backbone (inference only)."""

    def __init__(self, cfg: ModelConfig, variables, tokenizer, text_format: TextFormat = TextFormat(),
                 num_thinking_steps: int = 3, bucketing: Bucketing = INFERENCE_BUCKETING):
        check_soft_token_variables(cfg, variables)  # a pause model (cfg.soft_token) needs its vector
        self.cfg = cfg
        self.variables = variables
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.num_thinking_steps = resolve_num_thinking_steps(num_thinking_steps, num_thinking_steps)
        self.bucketing = bucketing
        self.model = Decoder(cfg)
        self.batch_shapes = set()  # (rows, width) of every batch encoded so far

    @property
    def compiled_widths(self) -> Tuple[int, ...]:
        """The padded widths (tokens) of the batches encoded so far, ascending: one compiled
        program each (per K and batch size)."""
        return tuple(sorted({w for _, w in self.batch_shapes}))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str, dtype: Optional[str] = None, *, chat_template: Optional[bool] = None,
                        query_template: Optional[str] = None, num_thinking_steps: Optional[int] = None
                        ) -> "LaserEncoder":
        """Load from a Hugging Face model directory or a laser_jax training workdir/checkpoint.

        Args:
          path: HF directory (config.json, safetensors, tokenizer) or a training workdir
            (its latest checkpoint) or one checkpoint step directory.
          dtype: "float32", "bfloat16" or "float16" for parameters and compute (default:
            float32 on CPU, bfloat16 on accelerators; the LaSER authors evaluate in float16).
          chat_template, query_template, num_thinking_steps: override the text format and
            default K. A training checkpoint and an HF directory with laser.json carry their
            own; an HF directory without laser.json gets the LaSER authors' format when it
            is a Qwen3 model with a chat template (their released checkpoints), else the
            spec's default, and one line on stderr says which
            (`laser_jax.inference.text_format`).

        Raises:
          ValueError: an override that cannot work (before loading), or chat wrapping asked
            of a tokenizer without a chat template.
        """
        dtype = dtype or default_dtype()
        check_dtype(dtype)
        check_overrides(chat_template, query_template, num_thinking_steps)  # before the (slow) load
        loaded = load_for_inference(path, dtype)
        fmt, steps, overridden = apply_overrides(loaded.text_format, loaded.num_thinking_steps,
                                                 chat_template=chat_template, query_template=query_template,
                                                 num_thinking_steps=num_thinking_steps)
        if fmt.chat_template and not has_chat_template(loaded.tokenizer):
            raise ValueError(f"{path}: chat wrapping is on (chat_template) but the tokenizer has no chat "
                             "template; use chat_template=False (--chat_template=false)")
        announce(path, loaded.format_origin, fmt, steps, overridden)
        return cls(loaded.cfg, loaded.variables, loaded.tokenizer, fmt, steps)

    # ------------------------------------------------------------------ encoding
    def encode_fn(self, num_thinking_steps: Optional[int] = None) -> EncodeFn:
        """(ids, mask) -> latent-view embeddings with K steps (default: the model's own)."""
        steps = resolve_num_thinking_steps(num_thinking_steps, self.num_thinking_steps)
        encode = functools.partial(encode_latent, self.model, self.variables, num_steps=steps)

        def encode_fn(ids, mask):
            self.batch_shapes.add(tuple(ids.shape))
            return encode(ids, mask)

        return encode_fn

    def iter_batches(self, texts: Sequence[str], num_thinking_steps: Optional[int] = None,
                     max_length: int = 512, batch_size: int = 32
                     ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices into `texts`, float32 embeddings) batch by batch, longest first."""
        return iter_batches(self.tokenizer, texts, self.encode_fn(num_thinking_steps), max_length=max_length,
                            batch_size=batch_size, bucketing=self.bucketing)

    def encode(self, texts: Sequence[str], num_thinking_steps: Optional[int] = None, max_length: int = 512,
               batch_size: int = 32, show_progress_bar: bool = False, desc: str = "encode") -> np.ndarray:
        """Embed texts exactly as given (the tokenizer's own special tokens, no template).

        Args:
          texts: the texts.
          num_thinking_steps: K (default: the model's own).
          max_length: truncation length in tokens.
          batch_size: rows per compiled call.
          show_progress_bar: a tqdm bar (texts) on stderr.
          desc: the bar's label.

        Returns:
          float32 [N, D], L2-normalised rows in input order.
        """
        return encode_texts(self.tokenizer, texts, self.encode_fn(num_thinking_steps), self.cfg.hidden_size,
                            max_length=max_length, batch_size=batch_size, bucketing=self.bucketing,
                            show_progress_bar=show_progress_bar, desc=desc)

    def format_queries(self, queries: Sequence[str], instruction: str) -> list:
        texts = [format_query(self.text_format.query_template, instruction, q) for q in queries]
        return self._maybe_chat(texts)

    def format_documents(self, docs: Sequence[str]) -> list:
        return self._maybe_chat(list(docs))

    def _maybe_chat(self, texts):
        return [chat_wrap(self.tokenizer, t) for t in texts] if self.text_format.chat_template else texts

    def encode_queries(self, queries: Sequence[str], instruction: str = "", **kw) -> np.ndarray:
        """Queries through the query template (and chat wrapping when configured)."""
        return self.encode(self.format_queries(queries, instruction), **kw)

    def encode_documents(self, docs: Sequence[str], **kw) -> np.ndarray:
        """Documents as they are (chat-wrapped when configured)."""
        return self.encode(self.format_documents(docs), **kw)
