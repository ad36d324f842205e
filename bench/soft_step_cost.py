#!/usr/bin/env python3
"""What a soft step costs against the prefill: the latent view timed at K = 1, 2, 3, 4.

One process, the four compiled encodings timed in alternating rounds (the order reversed
every other round), each round's times the median of --samples calls. A view with K >= 2
runs the prefill (P), then places the prefill's keys/values where the soft steps read them
(a fixed cost F, once per view) and runs K - 1 soft steps (S each):

    t(1) = P,   t(K) = P + F + (K - 1) S   for K >= 2,
    so S = (t(4) - t(2)) / 2,   F = t(2) - t(1) - S,   t(3) / t(1) = 1 + (F + 2 S) / P.

Given another implementation's own K3/K1 ratio r (`--match-ratio`, e.g. the PyTorch
baseline's from side_by_side.py), the K=3 view meets "K3/K1 <= r" when F + 2 S <= (r - 1) P:
the report gives that budget beside F + 2 S. `--vocab-products` also times the soft step's
two vocabulary products alone (logits h E^T and p @ E at the encode batch, float32) in JAX
and, when torch is installed, in torch in the same process.

    python bench/soft_step_cost.py --batch 64 --match-ratio 1.12 --vocab-products --out cost.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_laser  # noqa: E402 (also puts the repository root on sys.path)

DEFAULTS = ["--arch", "cpu-4x256", "--dtype", "fp32", "--enc-len", "128", "--unroll-soft-steps"]
STEPS = (1, 2, 3, 4)


def decompose(median_ms: dict, match_ratio: float = 0.0) -> dict:
    """P, S, F (ms) and K3/K1 from the medians at K = 1..4 (module docstring); with
    `match_ratio` r > 0 also the budget (r - 1) P that F + 2 S must fit to reach K3/K1 <= r."""
    t = {int(k): float(v) for k, v in median_ms.items()}
    missing = [k for k in STEPS if k not in t]
    if missing:
        raise ValueError(f"decompose needs the times at K = 1, 2, 3, 4; missing K = {missing}")
    step = (t[4] - t[2]) / 2
    out = {"prefill_ms": t[1], "soft_step_ms": step, "fixed_ms": t[2] - t[1] - step,
           "k3_over_k1": t[3] / t[1]}
    out["fixed_plus_two_steps_ms"] = out["fixed_ms"] + 2 * step
    if match_ratio > 0:
        out["match_ratio"] = match_ratio
        out["budget_ms"] = (match_ratio - 1) * t[1]
    return out


def time_rounds(programs: dict, rounds: int, samples: int) -> dict:
    """{name: [per-round median ms]}: every program timed each round (the median of
    `samples` calls, `bench_laser._median_time`), the order reversed every other round."""
    times = {name: [] for name in programs}
    for r in range(rounds):
        for name in (list(programs) if r % 2 == 0 else list(programs)[::-1]):
            times[name].append(1e3 * bench_laser._median_time(programs[name], 0, samples)[0])
    return times


def vocab_products(cfg, batch: int, rounds: int, samples: int) -> dict:
    """Median ms of the soft step's vocabulary products at [batch, D] x [V, D] (float32), in
    JAX and (if importable) torch, timed in alternating rounds in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.RandomState(0)
    table = (0.05 * rng.standard_normal((cfg.vocab_size, cfg.hidden_size))).astype(np.float32)
    h = rng.standard_normal((batch, cfg.hidden_size)).astype(np.float32)
    p = np.asarray(jax.nn.softmax(jnp.asarray(h) @ jnp.asarray(table).T, axis=-1))
    jt, jh, jp = jnp.asarray(table), jnp.asarray(h), jnp.asarray(p)
    logits, mix = jax.jit(lambda e, x: x @ e.T), jax.jit(lambda e, q: q @ e)
    programs = {"jax_logits": lambda: logits(jt, jh), "jax_p_at_E": lambda: mix(jt, jp)}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tt, th, tp = (torch.from_numpy(a.copy()) for a in (table, h, p))
        programs.update({"torch_logits": lambda: th @ tt.T, "torch_p_at_E": lambda: tp @ tt})
    for f in programs.values():
        jax.block_until_ready(f())
    times = time_rounds(programs, rounds, samples)
    return {name: statistics.median(v) for name, v in times.items()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--match-ratio", type=float, default=0.0, help="another implementation's K3/K1 (0 = none)")
    p.add_argument("--vocab-products", action="store_true")
    p.add_argument("--out", default="")
    args, rest = p.parse_known_args(argv)
    return args, bench_laser.parse_args(DEFAULTS + rest)  # later flags win


def main(argv=None) -> dict:
    import jax

    args, bench = parse_args(argv)
    cfg, model, variables = bench_laser.encode_model(bench)
    programs = {}
    for k in STEPS:
        programs[k] = bench_laser.encode_program(bench, model, variables, args.batch, k).run
        jax.block_until_ready(programs[k]())
        print(f"K={k}: compiled", flush=True)
    times = time_rounds(programs, args.rounds, args.samples)
    medians = {k: statistics.median(v) for k, v in times.items()}
    row = {"command": bench_laser.recorded_command(()), "arch": bench.arch, "dtype": bench.dtype,
           "batch": args.batch, "enc_len": bench.enc_len, "unroll_soft_steps": bench.unroll_soft_steps,
           "rounds": args.rounds, "samples": args.samples, "per_round_ms": times, "median_ms": medians,
           **decompose(medians, args.match_ratio)}
    if args.vocab_products:
        row["vocab_products_ms"] = vocab_products(cfg, args.batch, args.rounds, args.samples)
    print(json.dumps({k: v for k, v in row.items() if k != "per_round_ms"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)
    return row


if __name__ == "__main__":
    main()
