"""Ranking metrics (nDCG@k, Recall@k) computed with pytrec_eval, BRIGHT style.

trec_eval ranks a query's documents by score descending and breaks equal scores by
document id in descending string order; metrics here inherit that rule (as BRIGHT and BEIR
do). Excluded ids are removed from a query's run before scoring, as BRIGHT does.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytrec_eval

__all__ = ["DEFAULT_METRICS", "evaluate_run", "run_from_topk", "remove_excluded"]

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100")
_TREC_NAMES = {"ndcg": "ndcg_cut", "recall": "recall"}


def _parse(metric: str) -> Tuple[str, int]:
    name, sep, cut = metric.partition("@")
    if name not in _TREC_NAMES or not sep or not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"unknown metric {metric!r}; expected 'ndcg@K' or 'recall@K' (K >= 1)")
    return name, int(cut)


def remove_excluded(run: Mapping[str, Mapping[str, float]],
                    excluded: Optional[Mapping[str, Iterable[str]]]) -> Dict[str, Dict[str, float]]:
    """Copy of run without each query's excluded document ids.

    Args:
      run: {query id: {document id: score}}.
      excluded: {query id: iterable of document ids} or None.

    Returns:
      {query id: {document id: float score}}.
    """
    out = {}
    for qid, docs in run.items():
        drop = set(excluded.get(qid, ())) if excluded else set()
        out[qid] = {d: float(s) for d, s in docs.items() if d not in drop}
    return out


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Sequence[str] = DEFAULT_METRICS,
                 excluded: Optional[Mapping[str, Iterable[str]]] = None):
    """Per-query and mean metrics of a run against qrels.

    Args:
      run: {query id: {document id: score}}.
      qrels: {query id: {document id: relevance (int, > 0 relevant)}}.
      metrics: names like "ndcg@10", "recall@100" (any cut-off K).
      excluded: {query id: document ids} removed from the run before scoring.

    Returns:
      (per_query, mean): per_query {query id: {metric: float}} for every query in qrels (a
      query with no retrieved documents scores 0); mean {metric: float} over those queries
      (0.0 for empty qrels).
    """
    parsed = [(m, *_parse(m)) for m in metrics]
    cuts: Dict[str, set] = {}
    for _, name, cut in parsed:
        cuts.setdefault(name, set()).add(cut)
    measures = {f"{_TREC_NAMES[n]}.{','.join(str(c) for c in sorted(cs))}" for n, cs in cuts.items()}
    qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run = remove_excluded({str(q): {str(d): s for d, s in docs.items()} for q, docs in run.items()},
                          {str(q): [str(d) for d in v] for q, v in excluded.items()} if excluded else None)
    run = {q: docs for q, docs in run.items() if q in qrels and docs}
    results = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run) if run else {}
    per_query = {}
    for qid in qrels:
        got = results.get(qid, {})
        per_query[qid] = {m: float(got.get(f"{_TREC_NAMES[n]}_{c}", 0.0)) for m, n, c in parsed}
    mean = {m: float(np.mean([v[m] for v in per_query.values()])) if per_query else 0.0
            for m, _, _ in parsed}
    return per_query, mean


def run_from_topk(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray,
                  indices: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Turns exact_topk output into a run {query id: {document id: score}}.

    Args:
      query_ids: [Q] ids, row order of scores/indices.
      doc_ids: [N] ids, corpus row order.
      scores: float [Q, k]; indices: int [Q, k] (-1 = empty slot, skipped).

    Returns:
      The run dict.
    """
    run = {}
    for qid, row_s, row_i in zip(query_ids, np.asarray(scores), np.asarray(indices)):
        run[qid] = {doc_ids[i]: float(s) for s, i in zip(row_s, row_i) if i >= 0}
    return run
