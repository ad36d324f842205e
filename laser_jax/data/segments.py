"""Explicit-view segment positions (spec section 3), from token ids, numpy only.

The explicit sequence is e_ids (left padded, length Le) with one EOS embedding appended by
the model at index Le. Its reasoning region is [n_pad + query_len, Le): the tokens after
the query's own tokens. Segment ends are the region's positions holding a split id, plus
Le-1 if that is not one already; the M ends are downsampled to J (the spec's K):

  rule "linspace" (default, the authors' code): floor(torch.linspace(0, M-1, J)), emulated
    bit-exactly in float32 (see `linspace_floor`); keeps the first and last segment.
  rule "paper": j_i = floor(i*M/J) for i = 1..J read as 1-based positions, i.e. 0-based
    index floor(i*M/J) - 1; this reading always keeps the last segment.

With M < J all M ends are kept and the last is repeated; an empty region gives index Le
(the appended EOS) J times.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from laser_jax.data.errors import ConfigError

SEGMENT_RULES = ("linspace", "paper")
SPLIT_MODES = ("code", "any_double_newline")


def linspace_floor(m: int, j: int, fused: bool = True) -> np.ndarray:
    """floor(torch.linspace(0, m-1, j)) as torch computes it in float32.

    torch's kernel: step = (end - start) / (steps - 1) in float32; index i < steps // 2
    gives start + step * i, the rest end - step * (steps - i - 1); steps == 1 gives start.
    torch's x86 AVX2/AVX512 CPU kernels (the ones normally dispatched) and its CUDA kernel
    evaluate `a + b * c` as one fused multiply-add (one rounding), its generic CPU kernel
    (ATEN_CPU_CAPABILITY=default) rounds twice; `fused` picks which. They differ for a few
    (m, j), e.g. (17, 15): fused gives 7 at i = 7, unfused 8.

    Args:
      m: number of segments M (>= 1).
      j: number of indices J (>= 1).
      fused: emulate the fused multiply-add kernels (default) or the generic one.

    Returns:
      int64 [j] indices into 0..m-1.
    """
    if j == 1:
        return np.zeros(1, np.int64)
    start, end = np.float32(0.0), np.float32(m - 1)
    step = np.float32((end - start) / np.float32(j - 1))
    i = np.arange(j)
    k = np.where(i < j // 2, i, j - i - 1)
    if fused:
        # float32 * small int is exact in float64, and so is the sum; one final rounding.
        prod = np.float64(step) * k
        value = np.where(i < j // 2, np.float64(start) + prod, np.float64(end) - prod)
        value = value.astype(np.float32)
    else:
        prod = step * k.astype(np.float32)
        value = np.where(i < j // 2, start + prod, end - prod).astype(np.float32)
    return np.floor(value).astype(np.int64)


def downsample_indices(m: int, j: int, rule: str = "linspace") -> np.ndarray:
    """Which of M segment ends become the J aligned states.

    Args:
      m: number of segment ends M (>= 1).
      j: number of latent steps J (>= 1).
      rule: "linspace" or "paper" (module docstring).

    Returns:
      int64 [j] indices into 0..m-1 (non-decreasing).
    """
    if rule not in SEGMENT_RULES:
        raise ConfigError(f"segment rule {rule!r} is not one of {SEGMENT_RULES}")
    if m < j:
        return np.concatenate([np.arange(m), np.full(j - m, m - 1)]).astype(np.int64)
    if rule == "linspace":
        return linspace_floor(m, j)
    i = np.arange(1, j + 1, dtype=np.int64)
    return (i * m) // j - 1


def segment_positions(ids: np.ndarray, mask: np.ndarray, query_len: int, split_ids,
                      num_steps: int, rule: str = "linspace") -> np.ndarray:
    """The J aligned positions of one explicit-view row.

    Args:
      ids: int [Le] left-padded explicit token ids.
      mask: int [Le], 1 on real tokens.
      query_len: real tokens of the query as tokenized for the latent view (after its
        truncation).
      split_ids: int array / iterable of segment-ending token ids.
      num_steps: J.
      rule: "linspace" or "paper".

    Returns:
      int32 [J] indices into the length Le+1 sequence (Le = the appended EOS).
    """
    ids = np.asarray(ids)
    length = ids.shape[0]
    start = length - int(np.asarray(mask).sum()) + int(query_len)
    if start >= length:
        return np.full(num_steps, length, np.int32)
    region = ids[start:]
    split = split_ids if isinstance(split_ids, np.ndarray) else as_id_array(split_ids)
    ends = np.flatnonzero(np.isin(region, split)) + start
    if ends.size == 0 or ends[-1] != length - 1:
        ends = np.append(ends, length - 1)
    return ends[downsample_indices(ends.size, num_steps, rule)].astype(np.int32)


def segment_positions_batch(e_ids: np.ndarray, e_mask: np.ndarray, query_lens: np.ndarray,
                            split_ids, num_steps: int, rule: str = "linspace") -> np.ndarray:
    """`segment_positions` for every row.

    Args:
      e_ids: int [B, Le]; e_mask: int [B, Le]; query_lens: int [B].
      split_ids, num_steps, rule: as in `segment_positions`.

    Returns:
      int32 [B, J].
    """
    split = split_ids if isinstance(split_ids, np.ndarray) else as_id_array(split_ids)
    out = np.empty((e_ids.shape[0], num_steps), np.int32)
    for b in range(e_ids.shape[0]):
        out[b] = segment_positions(e_ids[b], e_mask[b], int(query_lens[b]), split, num_steps,
                                   rule)
    return out


def split_token_ids(tokenizer, mode: str = "code") -> np.ndarray:
    """Token ids that end a reasoning segment.

    Args:
      tokenizer: a Hugging Face tokenizer.
      mode: "code": the last id of tokenizer.encode("\\n\\n", add_special_tokens=False)
        (the EOS id if that is empty), as the authors' code; "any_double_newline": also
        every vocabulary id whose decoded text contains "\\n\\n" (catches ".\\n\\n"-style
        merges that the code's rule misses).

    Returns:
      Sorted int32 array of ids.
    """
    if mode not in SPLIT_MODES:
        raise ConfigError(f"split mode {mode!r} is not one of {SPLIT_MODES}")
    encoded = tokenizer.encode("\n\n", add_special_tokens=False)
    ids = {int(encoded[-1]) if encoded else int(tokenizer.eos_token_id)}
    if mode == "any_double_newline":
        vocab = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        ids |= {i for i, t in enumerate(texts) if "\n\n" in t}
    return np.asarray(sorted(ids), np.int32)


def as_id_array(ids: Iterable[int]) -> np.ndarray:
    """Sorted int32 array of token ids (accepts a set, list or array)."""
    return np.asarray(sorted(int(i) for i in ids), np.int32)
