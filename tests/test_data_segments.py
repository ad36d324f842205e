"""Explicit-view segment positions (spec section 3)."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from laser_jax.data.errors import ConfigError
from laser_jax.data.segments import (downsample_indices, linspace_floor, segment_positions,
                                     segment_positions_batch, split_token_ids)

SPLIT = 9
P = 0  # pad


def torch_table():
    return {(m, j): torch.linspace(0, m - 1, j).long().numpy()
            for m in range(1, 201) for j in range(1, 17)}


def mismatches(table, fused):
    return [(m, j) for (m, j), want in table.items()
            if not np.array_equal(linspace_floor(m, j, fused=fused), want)]


def test_linspace_matches_torch_for_all_small_sizes():
    table = torch_table()
    fused, unfused = mismatches(table, True), mismatches(table, False)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert fused == []          # torch's vectorised x86 kernels use fused multiply-add
        assert unfused != []        # ... and the two readings really differ, e.g. (17, 15)
    else:
        assert fused == [] or unfused == []


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 dispatch only")
def test_unfused_linspace_matches_torch_generic_kernel():
    code = ("import torch, json; print(json.dumps([torch.linspace(0, m - 1, j).long().tolist() "
            "for m in range(1, 201) for j in range(1, 17)]))")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    import json
    want = json.loads(out.stdout)
    got = [linspace_floor(m, j, fused=False).tolist() for m in range(1, 201) for j in range(1, 17)]
    assert got == want


def test_downsample_rules():
    assert downsample_indices(10, 3).tolist() == [0, 4, 9]
    assert downsample_indices(10, 3, "paper").tolist() == [2, 5, 9]    # floor(i*10/3) - 1
    assert downsample_indices(7, 1).tolist() == [0]                    # linspace keeps the first
    assert downsample_indices(7, 1, "paper").tolist() == [6]           # paper keeps the last
    assert downsample_indices(2, 4).tolist() == [0, 1, 1, 1]           # M < J: repeat the last
    assert downsample_indices(2, 4, "paper").tolist() == [0, 1, 1, 1]
    for m in range(1, 40):
        for j in range(1, 9):
            for rule in ("linspace", "paper"):
                idx = downsample_indices(m, j, rule)
                assert idx.shape == (j,) and idx.min() >= 0 and idx.max() <= m - 1
                assert (np.diff(idx) >= 0).all()
                if m >= j and (j > 1 or rule == "paper"):
                    assert idx[-1] == m - 1
    with pytest.raises(ConfigError):
        downsample_indices(3, 2, "nope")


def row(tokens, width):
    """Left-padded ids and mask of `tokens` in a row of `width`."""
    ids = [P] * (width - len(tokens)) + list(tokens)
    mask = [0] * (width - len(tokens)) + [1] * len(tokens)
    return np.array(ids, np.int32), np.array(mask, np.int32)


# tokens: 2 query tokens then the reasoning, left padded to 12 (so the last is index 11)
@pytest.mark.parametrize("reasoning,num_steps,rule,expected", [
    # 4 segment ends (3 split tokens + the last token) -> J = 3 of them
    ([5, SPLIT, 6, SPLIT, 7, SPLIT, 8], 3, "linspace", [6, 8, 11]),
    ([5, SPLIT, 6, SPLIT, 7, SPLIT, 8], 3, "paper", [6, 8, 11]),
    ([5, SPLIT, 6, SPLIT, 7, SPLIT, 8], 2, "linspace", [6, 11]),
    ([5, SPLIT, 6, SPLIT, 7, SPLIT, 8], 2, "paper", [8, 11]),
    # ends with a split token: it is the last end, not added twice
    ([5, SPLIT, 6, SPLIT], 3, "linspace", [9, 11, 11]),
    # fewer segments than J: keep all, repeat the last
    ([5, SPLIT, 6], 4, "linspace", [10, 11, 11, 11]),
    # no split token: the last reasoning token J times
    ([5, 6, 7], 3, "linspace", [11, 11, 11]),
    # no reasoning at all: the appended EOS (index Le = 12) J times
    ([], 3, "linspace", [12, 12, 12]),
])
def test_segment_positions(reasoning, num_steps, rule, expected):
    tokens = [1, 2] + reasoning
    # a split id inside the query region must not count
    tokens[0] = SPLIT
    ids, mask = row(tokens, 12)
    got = segment_positions(ids, mask, 2, {SPLIT}, num_steps, rule)
    assert got.dtype == np.int32 and got.tolist() == expected


def test_query_longer_than_row_gives_eos():
    ids, mask = row([1, 2, 3], 8)
    assert segment_positions(ids, mask, 5, [SPLIT], 2).tolist() == [8, 8]


def test_batch_version_equals_rows():
    rows = [row([1, 2, 5, SPLIT, 6, SPLIT, 7], 10), row([1, 2], 10), row([1, 2, 3, 5, 6, 7], 10)]
    ids = np.stack([r[0] for r in rows])
    mask = np.stack([r[1] for r in rows])
    qlen = np.array([2, 2, 3])
    out = segment_positions_batch(ids, mask, qlen, [SPLIT, 77], 3)
    assert out.shape == (3, 3) and out.dtype == np.int32
    for b in range(3):
        assert out[b].tolist() == segment_positions(ids[b], mask[b], qlen[b], [SPLIT], 3).tolist()


def test_split_ids_code_and_any_double_newline(tokenizer):
    code = split_token_ids(tokenizer, "code")
    assert code.tolist() == [tokenizer.encode("\n\n", add_special_tokens=False)[-1]]
    wide = split_token_ids(tokenizer, "any_double_newline")
    brute = {i for i in range(len(tokenizer)) if "\n\n" in tokenizer.decode([i])}
    assert set(wide.tolist()) == brute | set(code.tolist())
    # the test tokenizer merges ".\n\n" like Qwen's, so the wide set is really wider
    merged = tokenizer.encode("it.\n\nThen", add_special_tokens=False)
    assert any(t in wide and t not in code for t in merged)
    with pytest.raises(ConfigError):
        split_token_ids(tokenizer, "nope")


def test_split_id_falls_back_to_eos():
    class Tok:
        eos_token_id = 3

        def encode(self, text, add_special_tokens=False):
            return []
    assert split_token_ids(Tok(), "code").tolist() == [3]


def test_reasoning_cut_by_truncation(tokenizer):
    from laser_jax.data.tokenize import tokenize_batch

    query = "Query: What is 1 plus 2?"
    reasoning = "First, take 1\n\nThen add 2 to it\n\nSo the result is 3\n\nDone"
    q_ids, q_mask = tokenize_batch(tokenizer, [query], 64)
    full = tokenizer(query + reasoning)["input_ids"]
    nl = tokenizer.encode("\n\n", add_special_tokens=False)[-1]
    cut = [k for k, t in enumerate(full) if t == nl][1] + 3     # just after the 2nd "\n\n"
    e_ids, e_mask = tokenize_batch(tokenizer, [query + reasoning], cut)
    width, qlen = e_ids.shape[1], int(q_mask.sum())
    start = width - cut + qlen
    region_splits = [start + k for k, t in enumerate(e_ids[0, start:]) if t == nl]
    assert len(region_splits) == 2
    got = segment_positions(e_ids[0], e_mask[0], qlen, [nl], 4)
    # 2 split tokens + the cut's last token (not a split) = 3 ends, the last repeated
    assert got.tolist() == region_splits + [width - 1, width - 1]
