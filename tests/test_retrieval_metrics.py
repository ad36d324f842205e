"""nDCG@k / Recall@k via pytrec_eval against an independent hand-written computation.

(ranx is not the reference: it orders tied scores differently from trec_eval, and its numba
compilation alone takes most of a minute.)
"""
import math

import numpy as np
import pytest

from laser_jax.retrieval.metrics import evaluate_run, remove_excluded, run_from_topk


def trec_order(docs):
    """trec_eval's ranking: score descending, equal scores by doc id descending (string)."""
    return [d for d, _ in sorted(docs.items(), key=lambda t: (t[1], t[0]), reverse=True)]


def ndcg_at(docs, rels, k):
    ranked = trec_order(docs)[:k]
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(docs, rels, k):
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant & set(trec_order(docs)[:k])) / len(relevant)


QRELS = {
    "q1": {"d1": 1, "d4": 1},
    "q2": {"d2": 2, "d3": 1, "d9": 1},
    "q3": {"d7": 1},
    "q4": {"d5": 1},  # retrieves nothing relevant
}
RUN = {  # ties everywhere: the order among equal scores decides the metric
    "q1": {"d1": 0.5, "d2": 0.5, "d3": 0.5, "d4": 0.9, "d5": 0.1},
    "q2": {"d1": 0.7, "d2": 0.7, "d3": 0.2, "d8": 0.7, "d9": 0.2, "d6": 0.0},
    "q3": {"d7": 0.3, "d8": 0.3, "d6": 0.3, "d5": 0.3},
    "q4": {"d1": 1.0, "d2": 1.0},
}


def test_matches_independent_computation_with_ties():
    metrics = ("ndcg@1", "ndcg@2", "ndcg@3", "ndcg@10", "recall@1", "recall@2", "recall@3")
    per_query, mean = evaluate_run(RUN, QRELS, metrics)
    assert set(per_query) == set(QRELS)
    for qid in QRELS:
        for m in metrics:
            name, k = m.split("@")
            fn = ndcg_at if name == "ndcg" else recall_at
            expect = fn(RUN[qid], QRELS[qid], int(k))
            assert per_query[qid][m] == pytest.approx(expect, abs=1e-12), (qid, m)
    for m in metrics:
        assert mean[m] == pytest.approx(np.mean([per_query[q][m] for q in QRELS]))


def test_tie_rule_is_doc_id_descending():
    # d1, d2, d3 tie: trec_eval puts d3 first, so only d3 relevant gives ndcg@1 = 1.
    per_query, _ = evaluate_run({"q": {"d1": 1.0, "d2": 1.0, "d3": 1.0}}, {"q": {"d3": 1}},
                                ("ndcg@1",))
    assert per_query["q"]["ndcg@1"] == 1.0


def test_excluded_ids_removed_before_scoring():
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7}}
    qrels = {"q": {"c": 1}}
    per_query, _ = evaluate_run(run, qrels, ("ndcg@1", "recall@2"), excluded={"q": ["a", "b"]})
    assert per_query["q"] == {"ndcg@1": 1.0, "recall@2": 1.0}
    per_query, _ = evaluate_run(run, qrels, ("ndcg@1", "recall@2"))
    assert per_query["q"] == {"ndcg@1": 0.0, "recall@2": 0.0}
    assert remove_excluded(run, {"q": ["b"]}) == {"q": {"a": 0.9, "c": 0.7}}


def test_queries_without_results_count_as_zero():
    per_query, mean = evaluate_run({"q1": {"a": 1.0}, "q2": {}}, {"q1": {"a": 1}, "q2": {"a": 1},
                                                                    "q3": {"a": 1}}, ("ndcg@10",))
    assert per_query == {"q1": {"ndcg@10": 1.0}, "q2": {"ndcg@10": 0.0}, "q3": {"ndcg@10": 0.0}}
    assert mean["ndcg@10"] == pytest.approx(1 / 3)


def test_any_cutoff_and_bad_names():
    docs = {f"d{i:03d}": 1.0 - i / 1000 for i in range(300)}
    qrels = {"q": {"d000": 1, "d150": 1, "d299": 1}}
    _, mean = evaluate_run({"q": docs}, qrels, ("recall@100", "recall@200", "recall@1000"))
    assert mean == pytest.approx({"recall@100": 1 / 3, "recall@200": 2 / 3, "recall@1000": 1.0})
    for bad in ("map@10", "ndcg", "ndcg@0", "recall@x"):
        with pytest.raises(ValueError, match="unknown metric"):
            evaluate_run({"q": docs}, qrels, (bad,))


def test_run_from_topk_skips_empty_slots():
    run = run_from_topk(["q1", "q2"], ["a", "b", "c"], np.array([[0.5, 0.25], [1.0, -np.inf]]),
                        np.array([[2, 0], [1, -1]]))
    assert run == {"q1": {"c": 0.5, "a": 0.25}, "q2": {"b": 1.0}}
