"""Tokenization, left padding and length buckets (spec section 5).

A text is tokenized as `tokenizer(text, add_special_tokens=True)` (whatever special
tokens the tokenizer itself adds), truncated on the RIGHT at `max_len`, and LEFT padded
with the pad id (EOS when the tokenizer has no pad token); the mask is 1 on real tokens.
A batch is padded to the length bucket of its longest row, so XLA compiles only a handful
of shapes. Training buckets by fractions of the maximum length (a few shapes per view);
inference (`INFERENCE_BUCKETING`) follows the texts actually in the batch: multiples of 16
up to 64, then powers of two, capped at the maximum length, so a 20-token query is padded
to 32 whatever the maximum (8192 by default at evaluation). All arrays are int32 numpy.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from laser_jax.data.errors import ConfigError

DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 1.0)

# A fast tokenizer's truncation settings are state on the shared Rust object, set by each
# call; grain's prefetch threads would race on them, so calls are serialised (the Rust
# side still encodes a batch in parallel).
_TOKENIZER_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Bucketing:
    """How batch lengths are chosen.

    Attributes:
      multiple: every length is a multiple of this.
      fractions: bucket lengths are these fractions of max_len (rounded up to `multiple`);
        None pads to the longest row rounded up to `multiple` (many shapes).
      powers_of_two: widths follow the longest row whatever max_len: multiples of
        `multiple` up to 4 x `multiple`, then powers of two, capped at max_len
        (`batch_width`; `fractions` is then unused).
    """

    multiple: int = 16
    fractions: Optional[Tuple[float, ...]] = DEFAULT_FRACTIONS
    powers_of_two: bool = False

    def length(self, n: int, max_len: int) -> int:
        """Padded length for a batch whose longest row has `n` tokens (see bucket_length,
        batch_width)."""
        if self.powers_of_two:
            return batch_width(n, max_len, self.multiple)
        return bucket_length(n, max_len, self.multiple, self.fractions)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def bucket_lengths(max_len: int, multiple: int = 16,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Tuple[int, ...]:
    """All bucket lengths for `max_len`, ascending.

    Args:
      max_len: the truncation length.
      multiple: lengths are multiples of this.
      fractions: fractions of max_len; 1.0 is always added.

    Returns:
      Sorted distinct lengths round_up(ceil(f * max_len), multiple); e.g. max_len 512 ->
      (64, 128, 256, 512).
    """
    if max_len < 1 or multiple < 1:
        raise ConfigError(f"max_len ({max_len}) and multiple ({multiple}) must be >= 1")
    return tuple(sorted({_round_up(math.ceil(f * max_len), multiple)
                         for f in tuple(fractions) + (1.0,)}))


def bucket_length(n: int, max_len: int, multiple: int = 16,
                  fractions: Optional[Sequence[float]] = DEFAULT_FRACTIONS) -> int:
    """Padded length of a batch whose longest row has `n` tokens.

    Args:
      n: tokens in the longest row (0 <= n <= max_len).
      max_len: the truncation length.
      multiple: lengths are multiples of this.
      fractions: bucket fractions of max_len (see bucket_lengths); None = just round n
        up to `multiple`.

    Returns:
      The smallest bucket >= n.
    """
    if fractions is None:
        return _round_up(n, multiple)
    for length in bucket_lengths(max_len, multiple, fractions):
        if length >= n:
            return length
    raise ValueError(f"row of {n} tokens is longer than max_len={max_len}")


def batch_width(n: int, max_len: int, multiple: int = 16) -> int:
    """Padded width of a batch whose longest row has `n` tokens, following `n` only.

    Widths: `multiple`, 2x, 3x, 4x `multiple` (16, 32, 48, 64), then powers of two (128,
    256, ...), capped at `max_len`; about log2(max_len) shapes in all, and a batch of
    short texts stays narrow however large `max_len` is.

    Args:
      n: tokens in the longest row (0 <= n <= max_len).
      max_len: the truncation length.
      multiple: the step of the small widths.
    """
    if max_len < 1 or multiple < 1:
        raise ConfigError(f"max_len ({max_len}) and multiple ({multiple}) must be >= 1")
    if n > max_len:
        raise ValueError(f"row of {n} tokens is longer than max_len={max_len}")
    if n <= 4 * multiple:
        width = _round_up(n, multiple)
    else:
        width = 1 << (int(n) - 1).bit_length()
    return min(width, max_len)


# Inference: batch widths follow the texts in the batch (see batch_width).
INFERENCE_BUCKETING = Bucketing(powers_of_two=True)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)


def tokenize_texts(tokenizer, texts: Sequence[str], max_len: int) -> List[List[int]]:
    """Token ids of each text, truncated on the right at `max_len` (one batched call).

    Args:
      tokenizer: a Hugging Face (fast) tokenizer.
      texts: the texts.
      max_len: truncation length (special tokens the tokenizer adds count towards it).

    Returns:
      One list of ids per text.
    """
    if not texts:
        return []
    with _TOKENIZER_LOCK:
        side = getattr(tokenizer, "truncation_side", "right")
        tokenizer.truncation_side = "right"
        try:
            out = tokenizer(list(texts), add_special_tokens=True, truncation=True,
                            max_length=max_len, padding=False, return_attention_mask=False,
                            return_token_type_ids=False)
        finally:
            tokenizer.truncation_side = side
    return out["input_ids"]


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> Tuple[np.ndarray, np.ndarray]:
    """Left-pad ragged rows into arrays (vectorised, no per-token Python loop).

    Args:
      rows: N lists of ids, each at most `length` long.
      length: output width L.
      pad_id: id of the padding positions.

    Returns:
      (ids int32 [N, L], mask int32 [N, L]); row i's tokens end at column L-1.
    """
    lens = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
    if len(rows) and lens.max() > length:
        raise ValueError(f"a row has {int(lens.max())} tokens, more than the width {length}")
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    total = int(lens.sum())
    flat = np.fromiter(itertools.chain.from_iterable(rows), np.int32, count=total)
    row = np.repeat(np.arange(len(rows)), lens)
    starts = np.cumsum(lens) - lens
    col = (length - lens)[row] + np.arange(total) - starts[row]
    ids[row, col] = flat
    mask[row, col] = 1
    return ids, mask


def tokenize_batch(tokenizer, texts: Sequence[str], max_len: int,
                   bucketing: Optional[Bucketing] = Bucketing()) -> Tuple[np.ndarray, np.ndarray]:
    """Tokenize, right-truncate, and left-pad a list of texts to its length bucket.

    Used for every view in training and by the encoder at inference.

    Args:
      tokenizer: a Hugging Face (fast) tokenizer.
      texts: N texts (already formatted / chat-wrapped).
      max_len: truncation length.
      bucketing: how to choose the width; None pads to exactly max_len.

    Returns:
      (ids int32 [N, L], mask int32 [N, L]) with L = the bucket of the longest row.
    """
    rows = tokenize_texts(tokenizer, texts, max_len)
    longest = max((len(r) for r in rows), default=0)
    length = max_len if bucketing is None else bucketing.length(longest, max_len)
    return left_pad(rows, length, pad_token_id(tokenizer))


VIEWS = ("q", "d", "e")


def batch_lengths(batch: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """Widths of the views of a training batch, e.g. {"q": Lq, "d": Ld, "e": Le}.

    Hosts combine these (element-wise max over hosts) and call `repad_left` with the result.
    """
    return {v: int(batch[f"{v}_ids"].shape[1]) for v in VIEWS if f"{v}_ids" in batch}


def _existing_pad(ids: np.ndarray, mask: np.ndarray) -> int:
    padded = ids[mask == 0]
    return int(padded[0]) if padded.size else 0


def repad_left(batch: Mapping[str, np.ndarray], lengths: Mapping[str, int],
               pad_id: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Widen views of a training batch by adding LEFT padding.

    All hosts of a multi-host run must feed arrays of one shape: each pads its share to
    the largest bucket any host chose (see `batch_lengths`). Adding k left pad columns to
    the explicit view shifts its segment indices (`e_seg`, into the length Le+1 sequence)
    by k, so they still name the same tokens and Le+k is the appended EOS.

    Args:
      batch: a training batch (`q_ids`, `q_mask`, `d_ids`, ..., `e_seg`, `record`).
      lengths: new width per view prefix, e.g. {"q": 128, "d": 256, "e": 512}; each must
        be >= the current width.
      pad_id: id for the new padding columns; None reuses the id already in the view's
        padding (0 if the view has none; padding is masked, so its id never matters to
        the model, only to exact comparisons).

    Returns:
      A new batch dict (unchanged views and other keys are shared, not copied).
    """
    out = dict(batch)
    for prefix, new_len in lengths.items():
        if prefix not in VIEWS:
            raise ValueError(f"unknown view {prefix!r}; expected one of {VIEWS}")
        ids, mask = batch[f"{prefix}_ids"], batch[f"{prefix}_mask"]
        extra = int(new_len) - ids.shape[1]
        if extra < 0:
            raise ValueError(f"cannot shrink {prefix}_ids from {ids.shape[1]} to {new_len}")
        if extra == 0:
            continue
        pad = _existing_pad(ids, mask) if pad_id is None else pad_id
        out[f"{prefix}_ids"] = np.concatenate(
            [np.full((ids.shape[0], extra), pad, ids.dtype), ids], axis=1)
        out[f"{prefix}_mask"] = np.concatenate(
            [np.zeros((mask.shape[0], extra), mask.dtype), mask], axis=1)
        if prefix == "e" and "e_seg" in batch:
            out["e_seg"] = (batch["e_seg"] + extra).astype(batch["e_seg"].dtype)
    return out
