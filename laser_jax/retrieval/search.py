"""Exact inner-product top-k search, the corpus streamed to the accelerator block by block.

The corpus may be any array-like indexable by row slices (a numpy array, a memory-mapped
.npy larger than device memory, a jax array). Each block is copied to the device in its own
dtype (f16/bf16/f32), scored in float32 against all queries, and merged into a running
top-k kept on the device. One jitted block function serves every block (the last block is
padded), so a search compiles once per (queries, block) shape.

Ordering is deterministic: higher score first, and on equal scores the lower corpus index
first, also across block boundaries. Result slots that no candidate can fill (k larger than
the corpus, or than what is left after exclusions) hold score -inf and index -1.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["exact_topk", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 65536
# Index given to empty or masked candidates so they sort after every real corpus row.
_SENTINEL = np.iinfo(np.int32).max


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("precision",))
def _search_block(queries, block, start, n_total, exclude, run_scores, run_idx, *, precision):
    """Scores one corpus block and merges it into the running top-k.

    Args:
      queries: [Q, D] any float dtype.
      block: [B, D] any float dtype; rows at global index >= n_total are padding.
      start: int32 scalar, global index of the block's first row.
      n_total: int32 scalar, number of real corpus rows.
      exclude: int32 [Q, E] global corpus indices to drop per query, -1 = none.
      run_scores: float32 [Q, k] running top-k scores (descending).
      run_idx: int32 [Q, k] their corpus indices (_SENTINEL where empty).
      precision: jax.lax.Precision of the float32 matmul.

    Returns:
      (scores float32 [Q, k], indices int32 [Q, k]): the merged running top-k.
    """
    num_q, k = run_scores.shape
    width = block.shape[0]
    scores = jnp.matmul(queries.astype(jnp.float32), block.astype(jnp.float32).T,
                        precision=precision)  # [Q, B]
    # -0.0 and +0.0 are equal scores: make them one value so sorting cannot split them.
    scores = jnp.where(scores == 0, jnp.float32(0), scores)
    cols = start + jnp.arange(width, dtype=jnp.int32)
    scores = jnp.where(cols[None, :] < n_total, scores, -jnp.inf)
    local = exclude - start
    inside = (exclude >= 0) & (local >= 0) & (local < width)
    local = jnp.where(inside, local, width)  # out of bounds -> dropped by the scatter
    rows = jnp.arange(num_q, dtype=jnp.int32)[:, None]
    scores = scores.at[rows, local].set(-jnp.inf, mode="drop")

    # lax.top_k puts the lower index first on equal values (documented).
    blk_scores, blk_pos = jax.lax.top_k(scores, min(k, width))
    blk_idx = jnp.where(blk_scores == -jnp.inf, _SENTINEL, blk_pos.astype(jnp.int32) + start)
    all_scores = jnp.concatenate([run_scores, blk_scores], axis=1)
    all_idx = jnp.concatenate([run_idx, blk_idx], axis=1)
    # Explicit two-key sort: score descending, then corpus index ascending.
    neg, idx = jax.lax.sort((-all_scores, all_idx), dimension=1, num_keys=2)
    return -neg[:, :k], idx[:, :k]


def _exclusion_array(exclude, num_q: int, num_docs: int) -> np.ndarray:
    """Pads per-query exclusion lists into int32 [Q, E] (E a power of two, -1 padding)."""
    if exclude is None:
        return np.full((num_q, 1), -1, np.int32)
    if len(exclude) != num_q:
        raise ValueError(f"exclude has {len(exclude)} entries but there are {num_q} queries")
    lists = []
    for q, ex in enumerate(exclude):
        ex = np.asarray([] if ex is None else ex, dtype=np.int64).reshape(-1)
        if ex.size and (ex.min() < 0 or ex.max() >= num_docs):
            raise ValueError(f"exclude[{q}] holds corpus indices outside [0, {num_docs})")
        lists.append(ex)
    width = _next_pow2(max([1] + [ex.size for ex in lists]))
    out = np.full((num_q, width), -1, np.int32)
    for q, ex in enumerate(lists):
        out[q, :ex.size] = ex
    return out


def _finish(scores: np.ndarray, idx: np.ndarray):
    scores = np.asarray(scores, np.float32)
    idx = np.asarray(idx, np.int64)
    empty = (scores == -np.inf) | (idx == _SENTINEL)
    return np.where(empty, -np.inf, scores).astype(np.float32), np.where(empty, -1, idx)


def _jax_topk(queries, corpus, k, block_size, exclude, query_block_size, precision, device):
    num_q, num_docs = queries.shape[0], corpus.shape[0]
    width = min(block_size, num_docs)
    excl = _exclusion_array(exclude, num_q, num_docs)
    device = device or jax.local_devices()[0]  # this process's own device
    q_chunk = query_block_size or max(num_q, 1)
    out_s = np.full((num_q, k), -np.inf, np.float32)
    out_i = np.full((num_q, k), -1, np.int64)
    for q0 in range(0, num_q, q_chunk):
        q_host = np.asarray(queries[q0:q0 + q_chunk])
        nq = q_host.shape[0]
        if nq < q_chunk and num_q > q_chunk:  # pad the last query chunk: one compile
            q_host = np.concatenate([q_host, np.zeros((q_chunk - nq, q_host.shape[1]), q_host.dtype)])
        ex_host = excl[q0:q0 + q_chunk]
        if ex_host.shape[0] < q_host.shape[0]:
            ex_host = np.concatenate(
                [ex_host, np.full((q_host.shape[0] - ex_host.shape[0], excl.shape[1]), -1, np.int32)])
        q_dev = jax.device_put(q_host, device)
        ex_dev = jax.device_put(ex_host, device)
        run_s = jax.device_put(np.full((q_host.shape[0], k), -np.inf, np.float32), device)
        run_i = jax.device_put(np.full((q_host.shape[0], k), _SENTINEL, np.int32), device)
        n_total = np.int32(num_docs)
        previous = None
        for start in range(0, num_docs, width):
            blk = np.asarray(corpus[start:start + width])
            if blk.shape[0] < width:
                blk = np.concatenate([blk, np.zeros((width - blk.shape[0], blk.shape[1]), blk.dtype)])
            blk_dev = jax.device_put(blk, device)
            run_s, run_i = _search_block(q_dev, blk_dev, np.int32(start), n_total, ex_dev,
                                         run_s, run_i, precision=precision)
            # Keep at most two blocks in flight so streaming never piles blocks on the device.
            if previous is not None:
                previous.block_until_ready()
            previous = run_s
        s, i = _finish(np.asarray(run_s)[:nq], np.asarray(run_i)[:nq])
        out_s[q0:q0 + nq], out_i[q0:q0 + nq] = s, i
    return out_s, out_i


def _faiss_topk(queries, corpus, k, block_size, exclude):
    try:
        import faiss  # noqa: PLC0415  (deferred: faiss is an optional dependency, not installed by default)
    except ImportError as e:
        raise ImportError(
            "exact_topk(backend='faiss') needs the faiss package (pip install faiss-cpu, or a "
            "faiss GPU build); it is not installed. Use backend='jax' instead.") from e
    num_q, num_docs = queries.shape[0], corpus.shape[0]
    excl = [set()] * num_q if exclude is None else None
    if excl is None:
        ex_arr = _exclusion_array(exclude, num_q, num_docs)  # validates
        excl = [set(int(x) for x in row if x >= 0) for row in ex_arr]
    index = faiss.IndexFlatIP(queries.shape[1])
    for start in range(0, num_docs, block_size):
        index.add(np.ascontiguousarray(np.asarray(corpus[start:start + block_size]), np.float32))
    depth = min(num_docs, k + max(len(e) for e in excl)) if num_q else 0
    out_s = np.full((num_q, k), -np.inf, np.float32)
    out_i = np.full((num_q, k), -1, np.int64)
    if num_q == 0 or depth == 0:
        return out_s, out_i
    scores, ids = index.search(np.ascontiguousarray(np.asarray(queries), np.float32), depth)
    for q in range(num_q):
        keep = [(float(s), int(i)) for s, i in zip(scores[q], ids[q]) if i >= 0 and int(i) not in excl[q]]
        keep.sort(key=lambda t: (-t[0], t[1]))
        keep = keep[:k]
        out_s[q, :len(keep)] = [s for s, _ in keep]
        out_i[q, :len(keep)] = [i for _, i in keep]
    return out_s, out_i


def exact_topk(queries, corpus, k: int, *, block_size: int = DEFAULT_BLOCK_SIZE,
               exclude: Optional[Sequence[Sequence[int]]] = None, backend: str = "jax",
               query_block_size: Optional[int] = None, precision: str = "highest",
               device: Optional[jax.Device] = None):
    """Exact maximum-inner-product top-k of every query over the corpus.

    Args:
      queries: [Q, D] float16/bfloat16/float32 array (numpy or jax).
      corpus: [N, D] array-like sliceable by rows (numpy, np.memmap / np.load(mmap_mode="r"),
        jax array); read block_size rows at a time.
      k: number of results per query (>= 1). When k > N the result has N columns.
      block_size: corpus rows per device block; bounds device memory to about
        Q * block_size float32 scores plus the block itself.
      exclude: optional length-Q sequence; exclude[q] holds corpus indices removed from query
        q's candidates before the top-k (e.g. BRIGHT's excluded_ids).
      backend: "jax" (default) or "faiss" (IndexFlatIP, CPU float32; needs faiss installed;
        ties are broken the same way only among the candidates faiss returns).
      query_block_size: score at most this many queries at once (the corpus is streamed once
        per query chunk); None = all queries together.
      precision: jax matmul precision ("highest" keeps float32 products exact-ish on TPU/GPU
        instead of bf16/tf32 passes).
      device: jax device to run on (default: the first device).

    Returns:
      (scores float32 [Q, min(k, N)], indices int64 [Q, min(k, N)]), each row sorted by score
      descending and, on equal scores, by corpus index ascending. Slots left empty because
      fewer candidates remain (exclusions) hold score -inf and index -1.
    """
    queries_shape, corpus_shape = tuple(np.shape(queries)), tuple(np.shape(corpus))
    if len(queries_shape) != 2 or len(corpus_shape) != 2:
        raise ValueError(f"queries and corpus must be 2-D, got {queries_shape} and {corpus_shape}")
    if queries_shape[1] != corpus_shape[1]:
        raise ValueError(f"dimension mismatch: queries {queries_shape} vs corpus {corpus_shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if query_block_size is not None and int(query_block_size) < 1:
        raise ValueError(f"query_block_size must be >= 1, got {query_block_size}")
    num_q, num_docs = queries_shape[0], corpus_shape[0]
    k = min(int(k), num_docs)
    if k == 0 or num_q == 0:
        if exclude is not None and len(exclude) != num_q:
            raise ValueError(f"exclude has {len(exclude)} entries but there are {num_q} queries")
        return np.zeros((num_q, k), np.float32), np.zeros((num_q, k), np.int64)
    if backend == "faiss":
        return _faiss_topk(queries, corpus, k, int(block_size), exclude)
    if backend != "jax":
        raise ValueError(f"unknown backend {backend!r}; expected 'jax' or 'faiss'")
    prec = jax.lax.Precision(precision) if isinstance(precision, str) else precision
    return _jax_topk(queries, corpus, k, int(block_size), exclude, query_block_size, prec, device)
