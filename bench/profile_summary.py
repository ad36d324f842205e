#!/usr/bin/env python3
"""Summarise a JAX profiler trace without TensorBoard: where the device time goes.

`jax.profiler.trace(DIR)` writes `DIR/plugins/profile/<run>/<host>.trace.json.gz` (Chrome
trace format). This reads the newest one and reports, for the accelerator's kernel
streams only (processes named "/device:...", threads whose name contains "Stream"; the
derived "XLA Ops"/"XLA Modules" lines would count everything twice):

  span_us       first kernel start to last kernel end in the traced window,
  busy_us       the union of kernel intervals (time the device was doing anything),
  busy_frac     busy_us / span_us; well below 1 means launch / host / loop overhead,
  kernel_us     the sum of kernel durations (> busy_us when streams overlap),
  by_category   kernel time per kind: gemm, attention, copy, other (fusions, reductions),
  top           the kernels (grouped by HLO op when the trace names it, else by kernel
                name) with the most total time: count, total and mean duration.

  python bench/profile_summary.py DIR [--top 25] [--steps N]

`--steps N` divides the times by the number of traced steps, so they read per step.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
from typing import Dict, List, Optional

CATEGORIES = (("attention", re.compile(r"fmha|flash|cudnn|attention|sdpa", re.I)),
              ("gemm", re.compile(r"gemm|nvjet|cublas|cutlass|xmma|matmul|\bdot|wgmma", re.I)),
              ("copy", re.compile(r"memcpy|memset|copy", re.I)))


def latest_trace(trace_dir: str) -> str:
    """The newest `*.trace.json.gz` under `trace_dir` (FileNotFoundError naming the dir)."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir} (was jax.profiler.trace run there?)")
    return max(files, key=os.path.getmtime)


def load_events(path: str) -> List[dict]:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def kernel_events(events: List[dict]) -> List[dict]:
    """Complete ('X') events on the device processes' stream threads."""
    process_names: Dict[int, str] = {}
    thread_names: Dict[tuple, str] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            process_names[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            thread_names[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    devices = {pid for pid, name in process_names.items() if name.startswith("/device:")}
    streams = {key for key, name in thread_names.items() if key[0] in devices and "stream" in name.lower()}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in devices
            and (e["pid"], e.get("tid")) in streams and "dur" in e]


def _union_length(intervals: List[tuple]) -> float:
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def summarise(events: List[dict], top: int = 25, steps: int = 1) -> dict:
    """The summary described in the module docstring (times in microseconds per step)."""
    kernels = kernel_events(events)
    if not kernels:
        return {"kernels": 0, "note": "no device kernel streams in the trace (CPU run?)"}
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    span = max(stop for _, stop in intervals) - min(start for start, _ in intervals)
    busy = _union_length(intervals)
    per_key = collections.defaultdict(lambda: [0, 0.0])
    per_category = collections.Counter()
    for e in kernels:
        name = e.get("name", "?")
        key = e.get("args", {}).get("hlo_op") or name
        per_key[key][0] += 1
        per_key[key][1] += float(e["dur"])
        per_category[category(name)] += float(e["dur"])
    ranked = sorted(per_key.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernels": len(kernels) / steps, "span_us": span / steps, "busy_us": busy / steps,
            "busy_frac": busy / span if span else 0.0,
            "kernel_us": sum(d for _, d in per_key.values()) / steps,
            "by_category": {k: v / steps for k, v in per_category.most_common()},
            "top": [{"op": k[:160], "count": c / steps, "total_us": d / steps, "mean_us": d / c}
                    for k, (c, d) in ranked]}


def format_summary(s: dict) -> str:
    if not s.get("kernels"):
        return s.get("note", "no kernels")
    lines = [f"kernels/step {s['kernels']:.0f}  span {s['span_us'] / 1e3:.2f} ms  busy {s['busy_us'] / 1e3:.2f} ms "
             f"({100 * s['busy_frac']:.0f}%)  kernel sum {s['kernel_us'] / 1e3:.2f} ms",
             "by category (ms): " + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in s["by_category"].items()),
             f"{'total ms':>9} {'count':>7} {'mean us':>9}  op"]
    lines += [f"{r['total_us'] / 1e3:9.3f} {r['count']:7.1f} {r['mean_us']:9.1f}  {r['op']}" for r in s["top"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace_dir")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--steps", type=int, default=1, help="traced steps (times are divided by it)")
    a = p.parse_args(argv)
    path = latest_trace(a.trace_dir)
    summary = summarise(load_events(path), a.top, a.steps)
    print(path)
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
