"""laser_jax.experiments.latency: the efficiency table's structure with tiny random models."""
import json

import numpy as np
import pytest

from laser_jax.experiments import latency
from tiny_models import tiny_loaded

QUERIES = [("What is 3 plus 4?", "Given a question, retrieve passages that answer it."),
           ("What is 11 plus 2?", "Given a question, retrieve passages that answer it.")]


def test_latency_table_structure_and_ratios_to_basic(tokenizer):
    retriever, lm = tiny_loaded(tokenizer, seed=0), tiny_loaded(tokenizer, seed=1)
    seconds = {"basic": 0.5, "laser": 1.5, "rewrite_then_retrieve": 8.0}
    calls = []

    def timer(fn, repeats):
        """Runs the measured function once (it embeds the whole batch) and reports a set time."""
        emb = np.asarray(fn())
        calls.append(emb.shape)
        return seconds[list(seconds)[(len(calls) - 1) % 3]]

    table = latency.measure_latency(retriever, lm, QUERIES, max_new_tokens=3, batch_sizes=(1, 3), repeats=1,
                                    max_length=64, timer=timer)
    assert list(table) == list(latency.VARIANTS)
    assert calls == [(1, 32)] * 3 + [(3, 32)] * 3  # each variant embedded a whole batch
    for variant, rows in table.items():
        assert set(rows) == {"batch1", "batch3"}
        for b, row in ((1, rows["batch1"]), (3, rows["batch3"])):
            assert set(row) == {"ms_per_query", "ratio_to_basic"}
            assert row["ms_per_query"] == pytest.approx(1000 * seconds[variant] / b)
            assert row["ratio_to_basic"] == pytest.approx(seconds[variant] / seconds["basic"])
    # without an LM the rewrite row is left out; the real timer gives positive times
    table = latency.measure_latency(retriever, None, QUERIES, max_new_tokens=3, batch_sizes=(3,), repeats=1,
                                    max_length=64)
    assert list(table) == ["basic", "laser"] and table["basic"]["batch3"]["ratio_to_basic"] == 1.0
    assert table["laser"]["batch3"]["ms_per_query"] > 0
    json.dumps(table)
    assert "x basic" in latency.format_latency(table)


def test_median_seconds_warms_up_first():
    calls = []
    assert latency.median_seconds(lambda: calls.append(1), 3) >= 0 and len(calls) == 4
