#!/usr/bin/env python3
"""The causal-LM stage's train step: padded vs packed batches, on the real pipeline.

For each setting (a `label=FIELD=VALUE,FIELD=VALUE` spec of data.* / pretrain.* overrides on
the config's pretraining stage), sets up the stage's run on the generated task exactly as
`python -m laser_jax.train` would (train/stages.py stage_config, trainer.set_up) and reports:
the compile time of the first batch shape, the number of distinct batch shapes over
--steps steps (each is one more compile in a real run), the median step time over those
steps (shapes already compiled; the device synchronised after each step) and the median
CPU time of a step (all threads of the process: on a machine shared with other jobs the
steadier figure of the work a step takes), the real tokens
per step and per second, and the padded share of the batch. Settings run interleaved
(--rounds times each, in turn) so that a machine shared with other jobs weighs on each alike.

    python bench/bench_lm.py --task_dir runs/tiny/data \\
        padded= packed128=data.lm_pack_len=128,pretrain.batch_size=16 --steps 60 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from laser_jax.data import synthetic  # noqa: E402
from laser_jax.experiments.ablate import load_config, resolve_config_path  # noqa: E402
from laser_jax.train import lm, stages  # noqa: E402
from laser_jax.train.loop import fresh_state, global_batch  # noqa: E402
from laser_jax.train.trainer import set_up  # noqa: E402


def parse_setting(spec: str):
    label, _, rest = spec.partition("=")
    overrides = {}
    for kv in filter(None, rest.split(",")):
        key, value = kv.split("=", 1)
        overrides[key] = int(value) if value.lstrip("-").isdigit() else value
    return label, overrides


def measure(config: str, task: dict, overrides: dict, steps: int, scratch: str) -> dict:
    cfg = load_config(config, overrides)
    stage = stages.stage_config(cfg, task)
    run = set_up(stage, scratch)
    iterator = lm.iterator(run.source, run.tokenizer, run.options)
    state = fresh_state(run)
    batches = [next(iterator) for _ in range(steps)]
    shapes = sorted({b["ids"].shape for b in batches})
    started = time.perf_counter()
    for shape in shapes:  # every shape compiled before timing (a real run compiles each on first use)
        first = next(b for b in batches if b["ids"].shape == shape)
        run.program.step.lower(state, global_batch(first, run.program.batch_sharding)).compile()
        if shape == batches[0]["ids"].shape:
            compile_first = time.perf_counter() - started
    times, cpu, real, slots = [], [], [], []
    for host in batches:
        batch = global_batch(host, run.program.batch_sharding)
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = run.program.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        real.append(int(host["mask"].sum()))
        slots.append(host["mask"].size)
    step_s = statistics.median(times)
    return {"compile_first_s": round(compile_first, 2), "shapes": [list(s) for s in shapes],
            "step_s_median": round(step_s, 4), "step_cpu_s_median": round(statistics.median(cpu), 4), "real_tokens_per_step": float(np.mean(real)),
            "real_tokens_per_s": round(float(np.mean(real)) / step_s, 1),
            "padding_share": round(1 - sum(real) / sum(slots), 3), "loss_last": float(metrics["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="label=FIELD=VALUE,... (label= alone: the config as it is)")
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--task_dir", default="", help="a generated task (default: generated into a temporary dir)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="", help="JSON lines, one per measurement")
    a = p.parse_args(argv)
    config = resolve_config_path(a.config)
    with tempfile.TemporaryDirectory() as scratch:
        task_dir = a.task_dir or os.path.join(scratch, "data")
        base = load_config(config)
        task = synthetic.ensure_generated(task_dir, seed=base.data.synthetic_seed)
        for rnd in range(a.rounds):
            for spec in a.settings:
                label, overrides = parse_setting(spec)
                row = {"label": label, "round": rnd, "overrides": overrides, "load_average": os.getloadavg(),
                       **measure(config, task, overrides, a.steps, os.path.join(scratch, f"{label}_{rnd}"))}
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
