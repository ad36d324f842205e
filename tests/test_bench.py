"""bench/profile_summary.py: device time accounting from a Chrome-format profiler trace."""
import gzip
import json
import os
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
