#!/usr/bin/env python3
"""laser_jax and the PyTorch baseline in ONE process, timed in interleaved rounds (CPU).

On a machine shared with other jobs, two runs minutes apart are not comparable. Here both
implementations are built once (ours compiled, the baseline's model made by its own
`build_model`), then every round times each pair of workloads whose ratio is reported
(LoRA and full fine-tuning; K=1 and K=3 at one batch) for both implementations, back to
back, alternating which goes first: ours through `bench_laser`'s compiled programs, the
baseline through its own model, batch and functions in its `bench_train` / `bench_encode`
order. The two workloads of a pair are timed call by call in A B B A order, so drift within
a round falls on both alike. Reported: the median over rounds of each wall time (and of the
process CPU time, less sensitive to other jobs), and of each round's ratios.

Workloads, on one architecture (`--arch`; the baseline gets the same one through
`laser_jax.model.config.to_hf_config`): the train step with LoRA and with full fine-tuning
(same model and batch), and the latent-view encoding at each --enc-batches with K=1 and K=3.
Writes OUTDIR/side_by_side.json (everything: rounds, times, environment) and
OUTDIR/summary.json (the shape issue 22 asks for: machine, shapes, train, encode).

    python bench/side_by_side.py PATH/TO/torch_baseline.py bench/results/cpu_DATE \\
        --machine "2-core CPU, shared with other jobs" --rounds 7
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_laser  # noqa: E402 (also puts the repository root on sys.path)

# The shapes of the CPU side-by-side: small enough for 2 cores, the paper's structure kept.
DEFAULTS = ["--arch", "cpu-4x256", "--dtype", "fp32", "--queries", "4", "--group", "2", "--q-len", "64",
            "--d-len", "64", "--e-len", "128", "--K", "3", "--segments", "4", "--enc-len", "128",
            "--enc-batches", "8,64", "--enc-K", "1,3", "--remat", "none"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", help="path of the shared torch_baseline.py (it imports its ../reference)")
    p.add_argument("out_dir")
    p.add_argument("--machine", default="", help="how the machine is named in summary.json (default: "
                   "platform and core count)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--samples", type=int, default=3, help="timed calls per workload per round (their median; "
                   "the two workloads of a pair interleaved A B B A)")
    p.add_argument("--only", default="all", choices=["all", "train", "encode"])
    p.add_argument("--cpus", type=int, default=0, help="pin the process to its first N allowed cores before "
                   "JAX and torch start (both then size their thread pools to N; torch gets N threads). "
                   "Default: every allowed core")
    args, rest = p.parse_known_args(argv)
    bench = bench_laser.parse_args(DEFAULTS + rest)  # later flags win
    if sorted(bench.enc_K.split(",")) != ["1", "3"]:
        p.error(f"--enc-K {bench.enc_K}: the side-by-side times K=1 against K=3 (pass 1,3 or leave it out)")
    return args, bench


def baseline_arch(baseline, bench) -> None:
    """Give the baseline our architecture under our name (its ARCHS: (kind, HF config kwargs))."""
    from laser_jax.model.config import to_hf_config

    hf = to_hf_config(bench_laser.model_config(bench, "none"))
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "tie_word_embeddings", "rope_theta", "rms_norm_eps", "max_position_embeddings")
    baseline.ARCHS[bench.arch] = (hf["model_type"], {k: hf[k] for k in keys})


def _call(fn, sync=None) -> tuple:
    """(wall ms, process CPU ms) of one call of fn; `sync(result)` waits for the result
    (JAX's asynchronous dispatch)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if sync is not None:
        sync(out)
    return 1e3 * (time.perf_counter() - t), 1e3 * (time.process_time() - c)


def measure_pair(fa, fb, samples: int, sync=None) -> tuple:
    """((wall, cpu) of fa, (wall, cpu) of fb): medians of `samples` calls each, the calls
    interleaved A B B A A B ..., so a change of machine speed within the pair's window
    weighs on both."""
    got = ([], [])
    for i in range(2 * samples):
        which = (i + 1) // 2 % 2  # 0 1 1 0 0 1 1 0 ...
        got[which].append(_call((fa, fb)[which], sync))
    return tuple((statistics.median(w for w, _ in g), statistics.median(c for _, c in g)) for g in got)


class Ours:
    """Our compiled programs (bench_laser's), warmed up; `time(workload)` -> (wall, cpu) ms."""

    def __init__(self, bench, workloads, samples: int):
        import jax

        self.samples, self.programs, self.compile_s, self.sync = samples, {}, {}, jax.block_until_ready
        model = None
        for w in workloads:
            if w.kind == "train":
                program = bench_laser.train_program(types.SimpleNamespace(**{**vars(bench), "full": w.full}),
                                                    bench.remat)
            else:
                if model is None:
                    _, model, variables = bench_laser.encode_model(bench)
                program = bench_laser.encode_program(bench, model, variables, w.batch, w.k)
            self.programs[w.name], self.compile_s[w.name] = program.run, program.compile_s
            for _ in range(2):  # warm-up
                _call(program.run, self.sync)
            print(f"[ours] {w.name}: compiled in {program.compile_s:.1f} s", flush=True)

    def time_pair(self, wa, wb) -> tuple:
        return measure_pair(self.programs[wa.name], self.programs[wb.name], self.samples, self.sync)


class Baseline:
    """The baseline's own model, batch and functions: encoding is its `latent_encode` under
    inference_mode (what its `bench_encode` times); a train step is its `bench_train` step in
    the same order (latent view of queries and documents, explicit view, `laser_losses`,
    backward, clipping, AdamW, zero_grad), on a model wrapped by peft as it does."""

    def __init__(self, module, bench, samples: int):
        import torch

        self.m, self.R, self.torch, self.samples = module, module.R, torch, samples
        self.a = module.parse_args(["--arch", bench.arch, "--device", "cpu", "--dtype", bench.dtype,
                                    "--queries", str(bench.queries), "--group", str(bench.group),
                                    "--q-len", str(bench.q_len), "--d-len", str(bench.d_len),
                                    "--e-len", str(bench.e_len), "--K", str(bench.K),
                                    "--segments", str(bench.segments), "--lora-r", str(bench.lora_r),
                                    "--lora-alpha", str(int(bench.lora_alpha)),
                                    "--lora-dropout", str(bench.lora_dropout), "--enc-len", str(bench.enc_len),
                                    "--lr", str(bench.lr), "--clip", str(bench.clip)])
        self.dtype = module.DTYPES[self.a.dtype]
        self.gen = torch.Generator().manual_seed(self.a.seed)
        self.encoder = self._model().eval()
        self.vocab = self.encoder.config.vocab_size
        self.steps, self.inputs = {}, {}

    def _model(self):
        return self.m.build_model(self.a.arch, "cpu", self.dtype, self.a.attn, self.a.seed)

    def _train_step(self, full: bool):
        a, R, torch = self.a, self.R, self.torch
        model = self._model()
        if not full:
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=a.lora_r,
                                                     lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                                                     target_modules=self.m.LORA_TARGETS))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        batch, split_id, eos_id = self.m.make_train_batch(a, self.vocab, "cpu", self.gen)
        K = a.K

        def step():
            q_emb, q_steps = R.latent_encode(model, batch["q_ids"], batch["q_mask"], K)
            d_emb, _ = R.latent_encode(model, batch["d_ids"], batch["d_mask"], K)
            e_emb, e_steps = R.explicit_encode(model, batch["e_ids"], batch["e_mask"], batch["q_len"], K,
                                               split_id, eos_id)
            out = R.laser_losses(q_emb, q_steps, d_emb, e_emb, e_steps)
            out["loss"].backward()
            if a.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up (optimizer state)
        return step

    def _callable(self, w):
        if w.kind == "train":
            if w.name not in self.steps:
                self.steps[w.name] = self._train_step(w.full)
            return self.steps[w.name]
        if w.name not in self.inputs:
            ids = self.m.rand_ids(self.gen, (w.batch, self.a.enc_len), self.vocab, (), "cpu")
            self.inputs[w.name] = (ids, self.torch.ones_like(ids))
        ids, mask = self.inputs[w.name]

        def encode():
            with self.torch.inference_mode():
                return self.R.latent_encode(self.encoder, ids, mask, w.k)

        return encode

    def time_pair(self, wa, wb) -> tuple:
        return measure_pair(self._callable(wa), self._callable(wb), self.samples)


def workloads(args, bench) -> list:
    out = []
    if args.only in ("all", "train"):
        out += [types.SimpleNamespace(name=f"train_{m}", kind="train", full=m == "full") for m in ("lora", "full")]
    if args.only in ("all", "encode"):
        out += [types.SimpleNamespace(name=f"encode_b{b}_k{k}", kind="encode", batch=int(b), k=int(k))
                for b in bench.enc_batches.split(",") for k in bench.enc_K.split(",")]
    return out


def pairs(work) -> list:
    """The workloads in the pairs whose ratios are reported: (LoRA, full), (K=1, K=3) per batch."""
    by_name = {w.name: w for w in work}
    names = [("train_lora", "train_full")] + [(f"encode_b{b}_k1", f"encode_b{b}_k3")
                                              for b in sorted({w.batch for w in work if w.kind == "encode"})]
    return [(by_name[a], by_name[b]) for a, b in names if a in by_name and b in by_name]


def run_rounds(args, work, impls: dict) -> dict:
    """{impl: {workload: [ms per round]}} (wall, then process CPU), each round timing every
    pair for every implementation back to back, the order of the implementations
    alternating by round."""
    times = {name: {w.name: [] for w in work} for name in impls}
    cpu = {name: {w.name: [] for w in work} for name in impls}
    order = list(impls)
    for r in range(args.rounds):
        for wa, wb in pairs(work):
            for name in (order if r % 2 == 0 else order[::-1]):
                for w, (wall_ms, cpu_ms) in zip((wa, wb), impls[name].time_pair(wa, wb)):
                    times[name][w.name].append(wall_ms)
                    cpu[name][w.name].append(cpu_ms)
        print(f"[round {r + 1}/{args.rounds}] " + " ".join(
            f"{w.name}: {times['ours'][w.name][-1]:.1f}/{times['baseline'][w.name][-1]:.1f}" for w in work)
            + " (wall ms, ours/baseline)", flush=True)
    return times, cpu


def ratios(times: dict, work) -> dict:
    """Per implementation: each round's K3/K1 (per batch) and LoRA/full, and their medians."""
    out = {}
    for impl, t in times.items():
        per = {}
        names = {w.name for w in work}
        for b in sorted({w.batch for w in work if w.kind == "encode"}):
            k1, k3 = f"encode_b{b}_k1", f"encode_b{b}_k3"
            if {k1, k3} <= names:
                per[f"batch{b}_k3_over_k1"] = [x / y for x, y in zip(t[k3], t[k1])]
        if {"train_lora", "train_full"} <= names:
            per["lora_over_full"] = [x / y for x, y in zip(t["train_lora"], t["train_full"])]
        out[impl] = {k: {"per_round": v, "median": statistics.median(v)} for k, v in per.items()}
    return out


def summary(args, bench, medians: dict, rat: dict) -> dict:
    """summary.json in issue 22's shape (times in ms, medians over rounds, both in one run)."""
    ours, base = medians["ours"], medians["baseline"]
    out = {"machine": args.machine or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "shapes": {k: getattr(bench, k) for k in ("arch", "dtype", "queries", "group", "q_len", "d_len", "e_len",
                                                     "K", "lora_r", "lora_alpha", "lora_dropout", "remat",
                                                     "unroll_soft_steps", "enc_len")}}
    if "train_lora" in ours:
        out["train"] = {"lora_ms": ours["train_lora"], "full_ms": ours["train_full"]}
    encode = {}
    for key in rat["ours"]:
        if key.endswith("_k3_over_k1"):
            encode[key.split("_")[0]] = {"ours_k3_over_k1": rat["ours"][key]["median"],
                                         "baseline_k3_over_k1": rat["baseline"][key]["median"]}
    if encode:
        out["encode"] = encode
    return out


def pin(cpus: int) -> int:
    """Pin this process to its first `cpus` allowed cores (0: leave it); the number it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpus:
        os.sched_setaffinity(0, set(allowed[:cpus]))
        os.environ["OMP_NUM_THREADS"] = str(min(cpus, len(allowed)))
    return len(os.sched_getaffinity(0))


def main(argv=None):
    args, bench = parse_args(argv)
    cores = pin(args.cpus)  # before JAX or torch make their thread pools
    baseline = bench_laser.load_baseline(args.baseline)
    import torch

    torch.set_num_threads(cores)
    baseline_arch(baseline, bench)
    work = workloads(args, bench)
    impls = {"ours": Ours(bench, work, args.samples), "baseline": Baseline(baseline, bench, args.samples)}
    t0 = time.time()
    times, cpu = run_rounds(args, work, impls)
    medians = {impl: {w: statistics.median(v) for w, v in t.items()} for impl, t in times.items()}
    rat = ratios(times, work)
    import peft
    import transformers

    env = {**bench_laser.environment((args.baseline,)), "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": peft.__version__,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "cores_used": sorted(os.sched_getaffinity(0)), "load_average_at_end": os.getloadavg()}
    recorded_args = {**vars(args), "baseline": bench_laser.recorded_path(args.baseline)}
    full = {"env": env, "args": recorded_args, "bench_args": vars(bench), "rounds_s": time.time() - t0,
            "compile_s": impls["ours"].compile_s, "times_ms": times, "median_ms": medians, "ratios": rat,
            "process_cpu_ms": cpu, "median_process_cpu_ms": {i: {w: statistics.median(v) for w, v in t.items()}
                                                             for i, t in cpu.items()},
            "ratios_process_cpu": ratios(cpu, work)}
    summ = summary(args, bench, medians, rat)
    os.makedirs(args.out_dir, exist_ok=True)
    bench_laser.write_json(os.path.join(args.out_dir, "side_by_side.json"), full)
    bench_laser.write_json(os.path.join(args.out_dir, "summary.json"), summ)
    print(json.dumps(summ, indent=1))
    return full, summ


if __name__ == "__main__":
    main()
