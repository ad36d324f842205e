"""LaserEncoder: texts -> L2-normalised latent-view embeddings as numpy.

    from laser_jax import LaserEncoder
    enc = LaserEncoder.from_pretrained("path/to/hf_dir_or_workdir", dtype="bfloat16")
    q = enc.encode_queries(["why is the sky blue?"], instruction="Given a question, ...")
    d = enc.encode_documents(["Rayleigh scattering ..."])
    scores = q @ d.T

Texts are sorted by length, cut into batches of `batch_size` rows (the last one padded
with empty rows), left padded to a few length buckets, so a long corpus compiles one
program per bucket; rows come back in input order whatever the batching.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.data.formatting import TextFormat, chat_wrap, format_query
from laser_jax.data.tokenize import Bucketing, left_pad, pad_token_id, tokenize_texts
from laser_jax.method.views import latent_view
from laser_jax.model.config import ModelConfig
from laser_jax.model.decoder import Decoder


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


class LaserEncoder:
    """Latent-view encoder over one backbone (inference only)."""

    def __init__(self, cfg: ModelConfig, variables, tokenizer, text_format: TextFormat = TextFormat(),
                 num_thinking_steps: int = 3, bucketing: Bucketing = Bucketing()):
        self.cfg = cfg
        self.variables = variables
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.num_thinking_steps = num_thinking_steps
        self.bucketing = bucketing
        self.model = Decoder(cfg)

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
            float32 on CPU, bfloat16 on accelerators).
          chat_template, query_template, num_thinking_steps: override the text format and
            default J (a training checkpoint carries its own; an HF directory defaults to
            the spec's template without chat wrapping and J = 3).
        """
        from laser_jax.inference.load import load_for_inference

        dtype = dtype or default_dtype()
        loaded = load_for_inference(path, dtype)
        fmt = loaded.text_format
        fmt = dataclasses.replace(
            fmt, **{k: v for k, v in dict(chat_template=chat_template, query_template=query_template).items()
                    if v is not None})
        steps = num_thinking_steps or loaded.num_thinking_steps
        return cls(loaded.cfg, loaded.variables, loaded.tokenizer, fmt, steps)

    # ------------------------------------------------------------------ encoding
    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _encode_batch(self, variables, ids, mask, num_steps):
        emb, _ = latent_view(self.model, variables, ids, mask, num_steps)
        return emb

    def iter_batches(self, texts: Sequence[str], num_thinking_steps: Optional[int] = None,
                     max_length: int = 512, batch_size: int = 32
                     ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices into `texts`, float32 embeddings) batch by batch, longest first."""
        steps = num_thinking_steps or self.num_thinking_steps
        if steps < 1:
            raise ValueError(f"num_thinking_steps must be >= 1, got {steps}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size ({batch_size}) and max_length ({max_length}) must be >= 1")
        rows = tokenize_texts(self.tokenizer, list(texts), max_length)
        order = np.argsort([-len(r) for r in rows], kind="stable")
        pad = pad_token_id(self.tokenizer)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = [rows[i] for i in idx] + [[]] * (batch_size - len(idx))
            width = self.bucketing.length(max(len(r) for r in batch), max_length)
            ids, mask = left_pad(batch, width, pad)
            emb = self._encode_batch(self.variables, jnp.asarray(ids), jnp.asarray(mask), steps)
            yield idx, np.asarray(jax.device_get(emb), np.float32)[:len(idx)]

    def encode(self, texts: Sequence[str], num_thinking_steps: Optional[int] = None, max_length: int = 512,
               batch_size: int = 32) -> np.ndarray:
        """Embed texts exactly as given (the tokenizer's own special tokens, no template).

        Returns:
          float32 [N, D], L2-normalised rows in input order.
        """
        out = np.zeros((len(texts), self.cfg.hidden_size), np.float32)
        for idx, emb in self.iter_batches(texts, num_thinking_steps, max_length, batch_size):
            out[idx] = emb
        return out

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

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other
