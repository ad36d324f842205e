"""Exact blocked top-k search against a brute-force numpy ranking."""
import builtins

import jax
import ml_dtypes
import numpy as np
import pytest

from laser_jax.retrieval.search import exact_topk


def brute_force(q, c, k, exclude=None):
    """Reference: float64 scores, stable argsort of -score (lower index first on ties)."""
    scores = np.asarray(q, np.float64) @ np.asarray(c, np.float64).T
    out_s, out_i = [], []
    for r in range(scores.shape[0]):
        drop = set() if exclude is None or exclude[r] is None else set(int(x) for x in exclude[r])
        order = [j for j in np.argsort(-scores[r], kind="stable") if j not in drop][:k]
        s = np.full(min(k, c.shape[0]), -np.inf)
        i = np.full(min(k, c.shape[0]), -1)
        s[:len(order)], i[:len(order)] = scores[r, order], order
        out_s.append(s)
        out_i.append(i)
    return np.array(out_s), np.array(out_i)


def int_valued(rng, shape, dtype=np.float32):
    """Small integers: every dot product is exact in float32 and ties are frequent."""
    return rng.integers(-2, 3, shape).astype(dtype)


@pytest.mark.parametrize("block_size", [1, 7, 16, 64, 1000])
def test_matches_brute_force_with_ties(block_size):
    rng = np.random.default_rng(0)
    q, c = int_valued(rng, (9, 5)), int_valued(rng, (61, 5))
    scores, idx = exact_topk(q, c, 20, block_size=block_size)
    ref_s, ref_i = brute_force(q, c, 20)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    assert scores.shape == idx.shape == (9, 20)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_ties_across_block_boundaries():
    # Rows 3, 4, 5 (block 0/1 boundary at 4) and 8 (block 2) all score 1: lower index first.
    c = np.zeros((10, 2), np.float32)
    c[[8, 5, 4, 3], 0] = 1.0
    c[9, 0] = 2.0
    q = np.array([[1.0, 0.0]], np.float32)
    scores, idx = exact_topk(q, c, 5, block_size=4)
    np.testing.assert_array_equal(idx[0], [9, 3, 4, 5, 8])
    np.testing.assert_array_equal(scores[0], [2, 1, 1, 1, 1])
    # The same answer whatever the block size, including ones that split the tie elsewhere.
    for bs in (1, 2, 3, 5, 9, 10):
        np.testing.assert_array_equal(exact_topk(q, c, 5, block_size=bs)[1][0], [9, 3, 4, 5, 8])
    # Tied zeros beyond the tie fill in index order too (k > number of positive scores).
    _, idx = exact_topk(q, c, 10, block_size=3)
    np.testing.assert_array_equal(idx[0], [9, 3, 4, 5, 8, 0, 1, 2, 6, 7])


def test_all_equal_scores_keep_corpus_order():
    c = np.ones((23, 3), np.float32)
    q = np.ones((2, 3), np.float32)
    _, idx = exact_topk(q, c, 23, block_size=5)
    np.testing.assert_array_equal(idx, np.tile(np.arange(23), (2, 1)))


def test_excluded_ids_removed_before_topk():
    rng = np.random.default_rng(1)
    q, c = int_valued(rng, (4, 6)), int_valued(rng, (40, 6))
    full_s, full_i = exact_topk(q, c, 10, block_size=8)
    # Exclude each query's current top 3 (and some others): the list stays 10 long.
    exclude = [full_i[0, :3], [], np.array([0, 39, 17]), list(range(0, 40, 2))]
    scores, idx = exact_topk(q, c, 10, block_size=8, exclude=exclude)
    ref_s, ref_i = brute_force(q, c, 10, exclude)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)
    assert not set(idx[0]) & set(full_i[0, :3])
    assert (idx >= 0).all()


def test_exclusion_can_leave_empty_slots():
    c = np.eye(4, dtype=np.float32)
    q = np.array([[4, 3, 2, 1]], np.float32)
    scores, idx = exact_topk(q, c, 4, block_size=3, exclude=[[0, 2]])
    np.testing.assert_array_equal(idx[0], [1, 3, -1, -1])
    np.testing.assert_array_equal(scores[0], [3, 1, -np.inf, -np.inf])


def test_k_larger_than_corpus():
    rng = np.random.default_rng(2)
    q, c = int_valued(rng, (3, 4)), int_valued(rng, (6, 4))
    scores, idx = exact_topk(q, c, 100, block_size=4)
    assert scores.shape == idx.shape == (3, 6)
    np.testing.assert_array_equal(idx, brute_force(q, c, 100)[1])
    for row in idx:
        assert sorted(row) == list(range(6))


def test_random_floats_match_brute_force():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((16, 32)).astype(np.float32)
    c = rng.standard_normal((300, 32)).astype(np.float32)
    scores, idx = exact_topk(q, c, 25, block_size=64)
    ref_s, ref_i = brute_force(q, c, 25)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(idx, ref_i)  # random scores: no near-ties at this size


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_inputs_scored_in_float32(dtype):
    rng = np.random.default_rng(4)
    q, c = int_valued(rng, (5, 8), dtype), int_valued(rng, (50, 8), dtype)
    # Large values whose products overflow float16 (max 65504) unless upcast first.
    q[0], c[7] = 200.0, 200.0
    scores, idx = exact_topk(q, c, 12, block_size=16)
    ref_s, ref_i = brute_force(q.astype(np.float32), c.astype(np.float32), 12)
    assert scores.dtype == np.float32
    assert scores[0, 0] == 8 * 200.0 * 200.0
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_memory_mapped_corpus(tmp_path):
    rng = np.random.default_rng(5)
    q, c = int_valued(rng, (4, 6)), int_valued(rng, (45, 6), np.float16)
    np.save(tmp_path / "c.npy", c)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    _, idx = exact_topk(q, mm, 9, block_size=10)
    np.testing.assert_array_equal(idx, brute_force(q, c.astype(np.float32), 9)[1])


def test_query_chunks_and_one_compile_per_block_shape():
    """The padded last corpus block and last query chunk reuse the one compiled program:
    XLA compiles once for the whole search (counted through jax.monitoring)."""
    rng = np.random.default_rng(6)
    q, c = int_valued(rng, (11, 7)), int_valued(rng, (37, 7))  # shapes no other test uses
    compiles = []

    def on_event(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        # 4 corpus blocks (last one padded) x 3 query chunks (last one padded).
        _, idx = exact_topk(q, c, 7, block_size=10, query_block_size=4)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert len(compiles) == 1, compiles
    np.testing.assert_array_equal(idx, brute_force(q, c, 7)[1])


def test_input_errors():
    q, c = np.ones((2, 3), np.float32), np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_topk(q, np.ones((5, 4), np.float32), 2)
    with pytest.raises(ValueError, match="k must be"):
        exact_topk(q, c, 0)
    with pytest.raises(ValueError, match="exclude has 1 entries"):
        exact_topk(q, c, 2, exclude=[[0]])
    with pytest.raises(ValueError, match=r"exclude\[1\].*outside"):
        exact_topk(q, c, 2, exclude=[[0], [5]])
    with pytest.raises(ValueError, match="unknown backend"):
        exact_topk(q, c, 2, backend="annoy")


def test_empty_inputs():
    s, i = exact_topk(np.ones((0, 3), np.float32), np.ones((4, 3), np.float32), 2)
    assert s.shape == i.shape == (0, 2)
    s, i = exact_topk(np.ones((2, 3), np.float32), np.ones((0, 3), np.float32), 2)
    assert s.shape == i.shape == (2, 0)


def test_faiss_backend_missing_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="needs the faiss package"):
        exact_topk(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), 2, backend="faiss")


def test_faiss_backend_matches_jax():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    q = rng.standard_normal((6, 16)).astype(np.float32)
    c = rng.standard_normal((120, 16)).astype(np.float32)
    exclude = [[0, 1, 2], [], [5], [], list(range(50)), []]
    js, ji = exact_topk(q, c, 15, block_size=32, exclude=exclude)
    fs, fi = exact_topk(q, c, 15, block_size=32, exclude=exclude, backend="faiss")
    np.testing.assert_array_equal(fi, ji)
    np.testing.assert_allclose(fs, js, rtol=1e-5, atol=1e-5)
