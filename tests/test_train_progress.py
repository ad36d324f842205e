"""What a training run prints (issue 17): a line while the first step compiles and how long it
took, progress lines (step/total, elapsed, ETA, tokens/s, losses) at metrics rows and every
PROGRESS_SECONDS between them, and at the end where the outputs are."""
import logging
import os
import re

import pytest

from laser_jax.train import final_eval, loop
from laser_jax.train.flops import train_step_flops
from laser_jax.train.setup import model_config
from laser_jax.train.metrics import read_metrics
from laser_jax.train.main import train_main
from test_reliability import rtask, tiny_config  # noqa: F401 (rtask: a fixture)


def test_progress_lines_compile_time_eta_and_output_paths(rtask, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)  # a progress line after every step
    # The evaluation itself is tested elsewhere (and takes minutes here): only its outputs.
    monkeypatch.setattr(final_eval, "evaluate_dir", lambda *a: {"biology": {"ndcg@10": 0.5}})
    monkeypatch.setattr(final_eval, "summarize", lambda results: {"mean": {"ndcg@10": 0.5}})
    monkeypatch.setattr(final_eval, "format_table", lambda results: "the table")
    config = tiny_config(rtask, **{"train.num_steps": 4, "train.log_every": 100, "data.eval_dir": rtask["eval"],
                                   "train.peak_tflops": 0.5})
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="laser_jax"):
        code = train_main(config, str(tmp_path))
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("compiling the train step") for m in messages)
    assert any(re.fullmatch(r"compiled the train step in \d+\.\d s", m) for m in messages)
    progress = [m for m in messages if m.startswith("step ")]
    assert [int(re.match(r"step (\d+)/4 ", m).group(1)) for m in progress] == [1, 2, 3, 4]
    for m in progress:
        assert re.search(r"\(\d+%\) \| \S+ elapsed, ETA \S+ \| \d+ tok/s \| loss \d+\.\d+ \(cl_lat", m), m
    assert "s/step" in progress[0] and "s/step" not in progress[1]  # throughput with the metrics rows
    assert re.search(r"TFLOP/s/device executed \([\d.]+ by 6PT\) \| MFU [\d.]+% of 0.5 TFLOP/s "
                     r"\(train.peak_tflops\)", progress[0]), progress[0]
    # metrics.jsonl keeps its rows: step 1, every train.log_every steps and the last step.
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 4]
    # MFU from the FLOPs the setting executes (flops.train_step_flops), against train.peak_tflops.
    expected = train_step_flops(model_config(config, None), {"q_ids": (8, 64), "d_ids": (16, 48), "e_ids": (8, 128)},
                                config.laser.num_thinking_steps, explicit=True)
    for r in rows:
        assert r["tflops_per_s"] / r["model_tflops_per_s"] == pytest.approx(expected.executed / expected.model_6pt)
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5) and r["peak_tflops"] == 0.5
        assert "mfu_measured_peak" not in r  # no measured peak for a CPU
    done = [m for m in messages if m.startswith("trained to step 4 in ")]
    assert done and f"metrics in {tmp_path}/metrics.jsonl" in done[0] and f"{tmp_path}/checkpoints" in done[0]
    # The training curves as a PNG (losses, accuracies, learning rate of metrics.jsonl).
    assert f"training curves in {tmp_path}/training_curves.png" in done[0]
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"evaluation results: {os.path.join(tmp_path, 'eval_results.json')}" in out
    assert os.path.isfile(tmp_path / "eval_results.json")
