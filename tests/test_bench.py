"""bench/: profile summaries (profile_summary.py), the device-call plan and its dry run (run_device.sh),
the side-by-side summary (side_by_side.py) and the loop-aware HLO accounting (hlo_account.py)."""
import gzip
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import profile_summary  # noqa: E402


def _meta(pid, tid=None, process=None, thread=None):
    if process is not None:
        return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": process}}
    return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}}


def _x(pid, tid, ts, dur, name, hlo_op=None):
    e = {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}
    if hlo_op:
        e["args"] = {"hlo_op": hlo_op}
    return e


EVENTS = [
    _meta(1, process="/host:CPU"), _meta(1, 10, thread="python"),
    _meta(2, process="/device:GPU:0"), _meta(2, 20, thread="Stream #7(Compute)"),
    _meta(2, 21, thread="Stream #9(MemcpyH2D)"), _meta(2, 22, thread="XLA Ops"),
    _x(1, 10, 0, 1000, "PjitFunction(step)"),  # host: ignored
    _x(2, 22, 0, 500, "fusion.1"),  # derived op line: ignored
    _x(2, 20, 100, 40, "nvjet_tst_128x256_gemm", "dot.3"),
    _x(2, 20, 150, 40, "nvjet_tst_128x256_gemm", "dot.3"),
    _x(2, 20, 200, 30, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "custom-call.1"),
    _x(2, 21, 210, 10, "MemcpyH2D"),  # overlaps the attention kernel
    _x(2, 20, 300, 20, "loop_add_fusion"),
]


def test_summary_counts_only_device_streams_and_merges_overlap():
    s = profile_summary.summarise(EVENTS, top=10, steps=2)
    assert s["kernels"] == 5 / 2
    assert s["span_us"] == (320 - 100) / 2
    assert s["busy_us"] == (40 + 40 + 30 + 20) / 2  # the copy lies inside the attention kernel
    assert s["kernel_us"] == (40 + 40 + 30 + 10 + 20) / 2
    assert s["busy_frac"] == pytest.approx(130 / 220)
    assert s["by_category"] == {"gemm": 40.0, "attention": 15.0, "other": 10.0, "copy": 5.0}
    assert [r["op"] for r in s["top"]] == ["dot.3", "custom-call.1", "loop_add_fusion", "MemcpyH2D"]
    assert s["top"][0] == {"op": "dot.3", "count": 1.0, "total_us": 40.0, "mean_us": 40.0}
    assert "busy 0.07 ms (59%)" in profile_summary.format_summary(s)


def test_summary_reads_the_newest_trace_file_and_reports_cpu_only_traces(tmp_path):
    run = tmp_path / "plugins" / "profile" / "2026_11_27"
    run.mkdir(parents=True)
    with gzip.open(run / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": EVENTS[:2] + EVENTS[6:7]}, f)
    s = profile_summary.main([str(tmp_path)])
    assert s["kernels"] == 0 and "no device kernel" in s["note"]
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        profile_summary.latest_trace(str(tmp_path / "nothing"))


# --------------------------------------------------------------------------- the GPU call plan
import re  # noqa: E402
import shlex  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
# The flags the shared PyTorch baseline accepts (its README), so a step never dies on a typo.
BASELINE_FLAGS = {"--arch", "--device", "--dtype", "--attn", "--only", "--queries", "--group", "--q-len",
                  "--d-len", "--e-len", "--K", "--segments", "--full", "--lora-r", "--lora-alpha",
                  "--lora-dropout", "--lr", "--clip", "--ckpt", "--enc-len", "--enc-batches", "--enc-K",
                  "--warmup", "--iters", "--seed", "--out"}


def _phase_steps(phase):
    """(name, cap, argv) of every `step` of one phase of run_device.sh, variables expanded."""
    text = open(os.path.join(BENCH, "run_device.sh")).read().replace("\\\n", " ")
    variables = dict(re.findall(r'^\s*(Q06|Q8)="([^"]*)"', text, re.M))
    body = text.split("if [[ $PHASE == q06 ]]; then")[1]
    q06, q8b = body.split("\nelse\n")
    steps = []
    for line in (q06 if phase == "q06" else q8b.split("\nfi\n")[0]).splitlines():
        line = line.strip()
        if not line.startswith("step "):
            continue
        for var, value in variables.items():
            line = line.replace(f"${var}", value)
        words = shlex.split(line.replace('"$BASELINE"', "BASELINE").replace('"', "").replace("$", ""))
        steps.append((words[1], int(words[2]), words[3:]))
    return steps


@pytest.mark.parametrize("phase,budget", [("q06", 540), ("q8b", 300)])
def test_device_call_plan_fits_its_budget_and_every_command_parses(phase, budget):
    import bench_laser
    import loss_agreement

    steps = _phase_steps(phase)
    assert sum(cap for _, cap, _ in steps) <= budget
    names = [name for name, _, _ in steps]
    for kind in ("lora", "enc") + (("full",) if phase == "q06" else ()):  # every workload as a pair
        assert any(n.startswith("jax_") and kind in n for n in names), (phase, kind)
        assert any(n.startswith("torch_") and kind in n for n in names), (phase, kind)
    for name, _, argv in steps:
        assert argv[0] == "python"
        if argv[1] == "bench/bench_laser.py":
            bench_laser.parse_args(argv[2:])
        elif argv[1] == "bench/loss_agreement.py":
            loss_agreement.parse_args(argv[2:])
        else:
            assert argv[1] == "BASELINE", name
            flags = {a for a in argv[2:] if a.startswith("--")}
            assert flags <= BASELINE_FLAGS, (name, flags - BASELINE_FLAGS)
    if phase == "q8b":  # like for like: the baseline keeps its KV cache (--ckpt views), as ours does
        (argv,) = [a for n, _, a in steps if n == "torch_q8b_lora"]
        assert argv[argv.index("--ckpt") + 1] == "views"


def test_rows_reach_the_json_the_moment_they_are_measured_and_a_failed_profile_keeps_the_timing(tmp_path):
    import json
    import types

    import bench_laser

    out = tmp_path / "r.json"
    result = {"env": {}, "args": {}, "results": []}
    sink = bench_laser.RowSink(result, str(out))
    row = {"workload": "train", "step_ms": 12.5}
    sink(row)
    assert json.loads(out.read_text())["results"] == [row]  # on disk before anything else runs

    def broken_trace():
        raise RuntimeError("profiler unavailable")

    args = types.SimpleNamespace(profile=str(tmp_path / "prof"), profile_iters=1)
    bench_laser.add_profile(row, broken_trace, args, "train", sink)
    saved = json.loads(out.read_text())["results"]
    assert len(saved) == 1 and saved[0]["step_ms"] == 12.5
    assert "profiler unavailable" in saved[0]["profile_error"]
    bench_laser.add_profile(row, broken_trace, types.SimpleNamespace(profile=""), "train", sink)  # off: no-op


def test_dry_run_of_the_device_call_lists_every_step_and_runs_nothing(tmp_path):
    for phase in ("q06", "q8b"):
        out = tmp_path / phase
        done = subprocess.run(["bash", os.path.join(BENCH, "run_device.sh"), "BASELINE.py", str(out), phase],
                              env={**os.environ, "DRY": "1"}, capture_output=True, text=True, check=True)
        listed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("[dry] ")]
        assert listed == [name for name, _, _ in _phase_steps(phase)]
        assert sorted(os.listdir(out)) == ["log.txt"]  # nothing ran, nothing measured


def test_side_by_side_summary_has_the_issue_shape_and_per_round_ratios():
    import types

    import side_by_side

    work = [types.SimpleNamespace(name=n, kind=k, batch=b) for n, k, b in (
        ("train_lora", "train", None), ("train_full", "train", None), ("encode_b8_k1", "encode", 8),
        ("encode_b8_k3", "encode", 8), ("encode_b64_k1", "encode", 64), ("encode_b64_k3", "encode", 64))]
    times = {"ours": {"train_lora": [9, 10, 30], "train_full": [10, 11, 20], "encode_b8_k1": [10, 20, 10],
                      "encode_b8_k3": [12, 26, 13], "encode_b64_k1": [100, 100, 200], "encode_b64_k3": [110, 120, 210]},
             "baseline": {"train_lora": [1, 1, 1], "train_full": [1, 1, 1], "encode_b8_k1": [10, 10, 10],
                          "encode_b8_k3": [15, 15, 16], "encode_b64_k1": [10, 10, 10], "encode_b64_k3": [12, 12, 12]}}
    rat = side_by_side.ratios(times, work)
    assert rat["ours"]["batch8_k3_over_k1"]["per_round"] == [1.2, 1.3, 1.3]
    assert rat["ours"]["lora_over_full"]["median"] == pytest.approx(10 / 11)
    args = types.SimpleNamespace(machine="2-core CPU, shared with other jobs")
    bench = side_by_side.parse_args(["BASELINE.py", "OUT"])[1]
    medians = {impl: {w: sorted(v)[1] for w, v in t.items()} for impl, t in times.items()}
    summary = side_by_side.summary(args, bench, medians, rat)
    assert set(summary) == {"machine", "shapes", "train", "encode"}
    assert summary["train"] == {"lora_ms": 10, "full_ms": 11}
    assert summary["encode"] == {"batch8": {"ours_k3_over_k1": 1.3, "baseline_k3_over_k1": 1.5},
                                 "batch64": {"ours_k3_over_k1": pytest.approx(1.1), "baseline_k3_over_k1": 1.2}}
    assert summary["shapes"]["arch"] == "cpu-4x256" and summary["machine"] == args.machine


def test_side_by_side_times_a_pair_call_by_call_in_abba_order_and_refuses_unpaired_k():
    import types

    import side_by_side

    calls, clock = [], iter(range(100))
    fake = types.SimpleNamespace(perf_counter=lambda: 0.001 * next(clock) ** 2, process_time=lambda: 0.0)
    real, side_by_side.time = side_by_side.time, fake
    try:
        a, b = side_by_side.measure_pair(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    finally:
        side_by_side.time = real
    assert "".join(calls) == "abbaab"
    # call j spans clock ticks 2j, 2j + 1: 4j + 1 ms; a's calls 1, 13, 17, b's 5, 9, 21
    assert a[0] == pytest.approx(13) and b[0] == pytest.approx(9)
    work = side_by_side.workloads(types.SimpleNamespace(only="all"), side_by_side.parse_args(["B.py", "OUT"])[1])
    assert [(x.name, y.name) for x, y in side_by_side.pairs(work)] == [
        ("train_lora", "train_full"), ("encode_b8_k1", "encode_b8_k3"), ("encode_b64_k1", "encode_b64_k3")]
    with pytest.raises(SystemExit):
        side_by_side.parse_args(["B.py", "OUT", "--enc-K", "1,2,3"])


def test_results_name_a_file_outside_the_repository_by_its_name_only(tmp_path, monkeypatch):
    import bench_laser

    outside = str(tmp_path / "elsewhere" / "torch_baseline.py")
    assert bench_laser.recorded_path(outside) == "torch_baseline.py (supplied by the caller; not in this repository)"
    inside = os.path.join(bench_laser.ROOT, "bench", "side_by_side.py")
    assert bench_laser.recorded_path(inside) == inside
    monkeypatch.setattr(sys, "argv", ["bench/side_by_side.py", outside, "OUT", "--rounds", "3"])
    command = bench_laser.recorded_command((outside,))
    assert str(tmp_path) not in command and command.startswith("bench/side_by_side.py torch_baseline.py (")
    assert command.endswith(" OUT --rounds 3")


def test_soft_step_cost_splits_the_view_into_prefill_fixed_cost_and_steps():
    import soft_step_cost

    # P = 100, F = 10, S = 5: t(K) = 100 + 10 + 5 (K - 1) for K >= 2
    got = soft_step_cost.decompose({1: 100, 2: 115, 3: 120, 4: 125}, match_ratio=1.12)
    assert got["prefill_ms"] == 100 and got["soft_step_ms"] == 5 and got["fixed_ms"] == 10
    assert got["k3_over_k1"] == pytest.approx(1.2) and got["fixed_plus_two_steps_ms"] == 20
    assert got["budget_ms"] == pytest.approx(12)  # K3/K1 <= 1.12 needs F + 2 S <= 12 ms
    assert "budget_ms" not in soft_step_cost.decompose({"1": 1, "2": 2, "3": 3, "4": 4})
    with pytest.raises(ValueError, match=r"missing K = \[4\]"):
        soft_step_cost.decompose({1: 1, 2: 2, 3: 3})


def test_hlo_account_multiplies_loop_bodies_by_their_trip_count():
    import jax
    import jax.numpy as jnp

    import hlo_account

    def program(steps):
        def f(w, x):
            return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=steps)[0]
        return jax.jit(f).lower(jnp.ones((16, 16)), jnp.ones((4, 16))).compile().as_text()

    five, ten = hlo_account.account(program(5)), hlo_account.account(program(10))
    assert five["dot_flops"] == 5 * 2 * 4 * 16 * 16 and ten["dot_flops"] == 10 * 2 * 4 * 16 * 16
    per_step = hlo_account.difference(ten, five, 5)
    assert per_step["kernels"] >= 1 and per_step["kernels"] == (ten["kernels"] - five["kernels"]) / 5
    assert per_step["bytes"] >= 4 * 16 * 4  # at least the step's [4, 16] float32 output


def test_the_bench_programs_build_and_run_on_a_tiny_model():
    """bench_laser's train and encode programs, as side_by_side.py builds them (a lost import
    once broke them with no test noticing): one LoRA step and one K=2 encoding on tiny shapes."""
    import math

    import bench_laser

    args = bench_laser.parse_args(["--arch", "tiny", "--dtype", "fp32", "--queries", "2", "--group", "2",
                                   "--q-len", "8", "--d-len", "8", "--e-len", "12", "--K", "2", "--segments", "2",
                                   "--remat", "none", "--enc-len", "8", "--unroll-soft-steps"])
    train = bench_laser.train_program(args, "none")
    assert math.isfinite(float(train.run())) and train.metrics()["finite"] == 1.0
    _, model, variables = bench_laser.encode_model(args)
    encode = bench_laser.encode_program(args, model, variables, batch=2, k=2)
    assert encode.run().shape == (2, model.cfg.hidden_size)
