"""LaSER's ablations (paper Table 5) on the embedded synthetic task, over several seeds.

    python -m laser_jax.experiments.ablate [--seeds=0,1,2] [--out=experiments/] [--steps=N]

Every variant is trained by the project's trainer (`python -m laser_jax.train
--config=configs/tiny.py` with `--config.*` overrides, as subprocesses, `--parallel` at a
time, each on one CPU thread) at the same budget: the same steps, batch and data for every
variant and seed; the seed (`train.seed`) sets the initialisation, dropout and data order.
The task is generated once (seed `data.synthetic_seed`) into RUNS/data. Each trained model
is scored on the held-out split (`--split=eval`, the default; `--split=dev` is the
development split, for tuning). Variants:

  basic                   K=1, no explicit view (an ordinary last-token dense retriever)
  latent_only             K latent steps, no explicit view (GIRCSE-like)
  laser                   the full method (the config as it is)
  no_process_alignment    laser.lambda_kl_mid=0
  no_output_distillation  laser.lambda_kl_out=0
  no_co_learning          a teacher trained on the explicit view alone (lambda_latent=0, no KL),
                          then a student distilled from it frozen (laser.teacher_from)
  explicit_upper          the trained `laser` models' explicit view fed the gold reasoning
                          (laser_jax.experiments.explicit_upper): an upper bound

Outputs in OUT: ablation.json ({"metric", "seeds", "variants": {name: {mean, std,
per_seed}}, "command", "machine"}), ablation.md (table with per-domain means, the command,
machine, date, budget and timings) and ablation.png. Runs live in RUNS (default
runs/ablation); a run whose workdir already holds results for the same command is reused.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = "configs/tiny.py"
METRIC = "ndcg@10"
NO_EXPLICIT = {"laser.lambda_explicit": 0.0, "laser.lambda_kl_out": 0.0, "laser.lambda_kl_mid": 0.0}
# Training variants: config overrides on top of the base config.
VARIANTS: Dict[str, dict] = {
    "basic": {"laser.num_thinking_steps": 1, **NO_EXPLICIT},
    "latent_only": dict(NO_EXPLICIT),
    "laser": {},
    "no_process_alignment": {"laser.lambda_kl_mid": 0.0},
    "no_output_distillation": {"laser.lambda_kl_out": 0.0},
    "no_co_learning": {},  # + laser.teacher_from=<its teacher's run>
}
TEACHER = {"laser.lambda_latent": 0.0, "laser.lambda_kl_out": 0.0, "laser.lambda_kl_mid": 0.0,
           "data.eval_dir": ""}
DERIVED = ("explicit_upper",)  # evaluated from the `laser` runs, no training of its own
ALL_VARIANTS = tuple(VARIANTS) + DERIVED
DEFAULT_VARIANTS = ALL_VARIANTS
LABELS = {"basic": "basic contrastive (K=1)", "latent_only": "latent only (K=3, no explicit view)",
          "laser": "LaSER", "no_process_alignment": "w/o process alignment (lambda_kl_mid=0)",
          "no_output_distillation": "w/o output distillation (lambda_kl_out=0)",
          "no_co_learning": "w/o co-learning (frozen explicit teacher)",
          "explicit_upper": "explicit view + gold reasoning (upper bound)"}
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


# ----------------------------------------------------------------------------- config
def resolve_config_path(config: str) -> str:
    """`configs/tiny.py[:variant]` relative to the working directory or the repository."""
    path, _, variant = config.partition(":")
    for base in (os.getcwd(), REPO_ROOT):
        candidate = os.path.join(base, path)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate) + (f":{variant}" if variant else "")
    raise FileNotFoundError(f"config file {path} not found (from {os.getcwd()} or {REPO_ROOT})")


def load_config(config: str, overrides: Optional[dict] = None):
    """The ml_collections config of `path[:variant]`, with dotted overrides applied."""
    path, _, variant = config.partition(":")
    spec = importlib.util.spec_from_file_location("_ablation_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant or None)
    for key, value in (overrides or {}).items():
        node, parts = c, key.split(".")
        for p in parts[:-1]:
            node = getattr(node, p)
        setattr(node, parts[-1], value)
    return c


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ----------------------------------------------------------------------------- jobs
@dataclasses.dataclass
class Job:
    """One subprocess: a training run or an explicit-upper evaluation."""
    name: str                      # e.g. "laser/seed1"
    variant: str
    seed: int
    workdir: str
    argv: List[str]
    result: str                    # JSON file the job leaves behind when it succeeded
    deps: List[str] = dataclasses.field(default_factory=list)
    config: Optional[dict] = None  # a training run's resolved config (config file + overrides)
    cpu: Optional[int] = None      # the CPU the running job is pinned to (run_jobs with cpus)
    log: str = ""
    returncode: Optional[int] = None
    seconds: float = 0.0
    reused: bool = False
    started: float = 0.0
    proc: Optional[subprocess.Popen] = None

    @property
    def marker(self) -> str:
        stem = os.path.splitext(os.path.basename(self.result))[0]
        return os.path.join(self.workdir, f"ablation_command_{stem}.json")

    def done_before(self) -> bool:
        """True when the workdir holds this exact command's finished result, trained with the
        same resolved config (an edited config file behind the same command line reruns)."""
        try:
            with open(self.marker) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            return False
        return (marker.get("argv") == self.argv and marker.get("config") == self.config
                and os.path.isfile(self.result))


def train_argv(config: str, workdir: str, overrides: dict) -> List[str]:
    return [sys.executable, "-m", "laser_jax.train", f"--config={config}", f"--workdir={workdir}",
            *[f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]]


def plan_jobs(variants: Sequence[str], seeds: Sequence[int], config: str, runs_dir: str, data: dict,
              split: str, base: dict, eval_max_length: int, eval_batch_size: int) -> List[Job]:
    """Jobs for every (variant, seed), with the teacher runs and upper-bound evaluations."""
    data_overrides = {"data.synthetic": False, "data.train_files": data["train"],
                      "model.tokenizer": data["tokenizer"], "data.eval_dir": data[split]}
    jobs = []
    for variant in variants:
        for seed in seeds:
            run = os.path.join(runs_dir, variant, f"seed{seed}")
            common = {**data_overrides, **base, "train.seed": seed}
            if variant == "explicit_upper":
                laser_run = os.path.join(runs_dir, "laser", f"seed{seed}")
                out = os.path.join(laser_run, f"explicit_upper_{split}.json")
                argv = [sys.executable, "-m", "laser_jax.experiments.explicit_upper", f"--model={laser_run}",
                        f"--data={data[split]}", f"--output={out}", f"--max_length={eval_max_length}",
                        f"--batch_size={eval_batch_size}"]
                jobs.append(Job(f"explicit_upper/seed{seed}", variant, seed, laser_run, argv, out,
                                deps=[f"laser/seed{seed}"] if "laser" in variants else []))
                continue
            overrides = {**common, **VARIANTS[variant]}
            deps = []
            if variant == "no_co_learning":
                teacher = os.path.join(runs_dir, "explicit_teacher", f"seed{seed}")
                t_over = {**common, **TEACHER}
                jobs.append(Job(f"explicit_teacher/seed{seed}", "explicit_teacher", seed, teacher,
                                train_argv(config, teacher, t_over), os.path.join(teacher, "run_config.json"),
                                config=resolved_config(config, t_over)))
                overrides["laser.teacher_from"] = teacher
                deps = [f"explicit_teacher/seed{seed}"]
            jobs.append(Job(f"{variant}/seed{seed}", variant, seed, run, train_argv(config, run, overrides),
                            os.path.join(run, "eval_results.json"), deps,
                            config=resolved_config(config, overrides)))
    return jobs


def resolved_config(config: str, overrides: dict) -> dict:
    """The config a training job will run, as JSON values (what a reused run must match)."""
    return json.loads(json.dumps(load_config(config, overrides).to_dict(), sort_keys=True))


def child_env(parallel: int, cache_dir: str) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if parallel > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} {SINGLE_THREAD}".strip()  # one thread per run: `parallel` runs share the cores
    env["XLA_FLAGS"] = flags
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)  # seeds of a variant compile once
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cpu_slots(parallel: int) -> List[int]:
    """One CPU for each of `parallel` runs when this process may use that many (Linux), else [].

    Pinned single-threaded runs do not contend for a core: on the 2-core machine two tiny-config
    runs took 0.26 / 0.27 s per step pinned against 0.31 / 0.36 s unpinned (0.16 s alone).
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []
    return cpus[:parallel] if parallel > 1 and len(cpus) >= parallel else []


def run_jobs(jobs: List[Job], parallel: int, env: dict, log=print, cpus: Sequence[int] = ()) -> None:
    """Run the jobs, `parallel` at a time, each after its dependencies succeeded; with `cpus`
    (one per parallel run, see cpu_slots) each run is pinned to a CPU no other run holds."""
    by_name = {j.name: j for j in jobs}
    pending = list(jobs)
    running: List[Job] = []
    while pending or running:
        for job in list(running):
            rc = job.proc.poll()
            if rc is None:
                continue
            job.returncode, job.seconds = rc, time.time() - job.started
            job.proc = None
            running.remove(job)
            if rc == 0:
                with open(job.marker, "w") as f:
                    json.dump({"argv": job.argv, "config": job.config, "seconds": job.seconds}, f)
            log(f"[ablate] {job.name}: {'done' if rc == 0 else f'FAILED (exit {rc}), see {job.log}'} "
                f"in {job.seconds:.0f}s")
        for job in list(pending):
            if len(running) >= parallel:
                break
            deps = [by_name[d] for d in job.deps if d in by_name]
            if any(d.returncode not in (None, 0) for d in deps):
                job.returncode = -1
                pending.remove(job)
                log(f"[ablate] {job.name}: skipped (a dependency failed)")
                continue
            if any(d.returncode is None for d in deps):
                continue
            pending.remove(job)
            if job.done_before():
                job.returncode, job.reused = 0, True
                with open(job.marker) as f:
                    job.seconds = float(json.load(f).get("seconds", 0.0))
                log(f"[ablate] {job.name}: reusing the finished run in {job.workdir}")
                continue
            if job.variant != "explicit_upper" and os.path.isdir(job.workdir):
                shutil.rmtree(job.workdir)  # stale or different run: start clean
            os.makedirs(job.workdir, exist_ok=True)
            job.log = os.path.join(job.workdir, f"log_{os.path.splitext(os.path.basename(job.result))[0]}.txt")
            job.cpu = next((c for c in cpus if c not in {j.cpu for j in running}), None)
            pin = None if job.cpu is None else functools.partial(os.sched_setaffinity, 0, {job.cpu})
            log(f"[ablate] {job.name}: starting" + (f" on cpu {job.cpu}" if pin else ""))
            with open(job.log, "w") as out:
                out.write(" ".join(shlex.quote(a) for a in job.argv) + "\n")
                out.flush()
                job.proc = subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            cwd=REPO_ROOT, preexec_fn=pin)
            job.started = time.time()
            running.append(job)
        if running:
            time.sleep(0.5)


# ----------------------------------------------------------------------------- results
def read_score(job: Job) -> Optional[dict]:
    """{"average": x, "domains": {d: x}} of the job's metric, or None when it has none."""
    if job.returncode != 0 or not os.path.isfile(job.result):
        return None
    with open(job.result) as f:
        summary = json.load(f)
    return {"average": float(summary["average"][METRIC]),
            "domains": {d: float(m[METRIC]) for d, m in summary["domains"].items()}}


def summarize_scores(jobs: Sequence[Job], variants: Sequence[str], seeds: Sequence[int]) -> dict:
    """{variant: {mean, std, per_seed, per_domain, seeds}}; std is the sample std (ddof=1)."""
    out = {}
    for variant in variants:
        scores = {j.seed: read_score(j) for j in jobs if j.variant == variant}
        done = [s for s in seeds if scores.get(s) is not None]
        if not done:
            continue
        values = [scores[s]["average"] for s in done]
        domains = sorted(scores[done[0]]["domains"])
        out[variant] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_seed": values, "seeds": done,
            "per_domain": {d: float(np.mean([scores[s]["domains"][d] for s in done])) for d in domains},
        }
    return out


def results_json(summary: dict, seeds: Sequence[int], command: str, machine: str) -> dict:
    """The ablation.json object (exactly the documented shape)."""
    return {"metric": METRIC, "seeds": list(seeds),
            "variants": {v: {"mean": s["mean"], "std": s["std"], "per_seed": s["per_seed"]}
                         for v, s in summary.items()},
            "command": command, "machine": machine}


def beats(summary: dict, a: str, b: str) -> Optional[bool]:
    """Whether a's mean exceeds b's by more than the seed spread (mean - std > mean + std)."""
    if a not in summary or b not in summary:
        return None
    return summary[a]["mean"] - summary[a]["std"] > summary[b]["mean"] + summary[b]["std"]


def ordering_verdict(summary: dict) -> str:
    checks = [("laser", "latent_only"), ("latent_only", "basic"), ("explicit_upper", "laser")]
    parts = []
    for a, b in checks:
        verdict = beats(summary, a, b)
        if verdict is None:
            parts.append(f"{a} vs {b}: not measured")
            continue
        diff = summary[a]["mean"] - summary[b]["mean"]
        parts.append(f"{a} {'>' if verdict else 'is NOT clearly >'} {b} "
                     f"(difference of means {100 * diff:+.1f} points; 'clearly' = "
                     f"mean - std above the other's mean + std)")
    return "; ".join(parts)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    try:
        import jax  # noqa: PLC0415

        backend = f"jax {jax.__version__}"
    except ImportError:  # pragma: no cover
        backend = "jax not importable"
    return f"{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}, {backend}"


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_markdown(path: str, summary: dict, seeds, command: str, machine: str, budget: str,
                   timing: str, split: str, notes: str = "") -> None:
    domains = sorted({d for s in summary.values() for d in s["per_domain"]})
    lines = [f"# LaSER ablations on the synthetic task ({split} split)", "",
             f"nDCG@10 (x100) on the held-out `{split}/` queries (all domains averaged, then "
             f"per domain), mean +- sample std over seeds {list(seeds)}.", "",
             "| variant | nDCG@10 mean +- std | " + " | ".join(domains) + " | per seed |",
             "|---|---|" + "---|" * len(domains) + "---|"]
    for variant, s in summary.items():
        per_seed = ", ".join(f"{100 * v:.1f}" for v in s["per_seed"])
        lines.append(f"| {LABELS.get(variant, variant)} | {100 * s['mean']:.1f} +- {100 * s['std']:.1f} | "
                     + " | ".join(f"{100 * s['per_domain'].get(d, float('nan')):.1f}" for d in domains)
                     + f" | {per_seed} |")
    lines += ["", f"Ordering: {ordering_verdict(summary)}.", "",
              "## Set-up", "", f"- command: `{command}`", f"- machine: {machine}",
              f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
              f"- budget (every variant and seed): {budget}", f"- timing: {timing}", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_plot(path: str, summary: dict, title: str) -> None:
    """Bar chart of the means with std error bars and the per-seed points."""
    names = list(summary)
    means = np.array([100 * summary[n]["mean"] for n in names])
    stds = np.array([100 * summary[n]["std"] for n in names])
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        write_png_bars(path, means, stds)
        return
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4.2))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=["#999999" if n in ("basic", "latent_only") else
                                                   "#4c72b0" if n != "explicit_upper" else "#55a868"
                                                   for n in names])
    for i, n in enumerate(names):
        ax.scatter([i] * len(summary[n]["per_seed"]), [100 * v for v in summary[n]["per_seed"]],
                   color="black", s=10, zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("nDCG@10 (x100)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_png_bars(path: str, means, stds, width: int = 480, height: int = 300) -> None:
    """A minimal bar chart PNG (bars = means on a 0..100 scale, a thin line = +- std)
    without matplotlib."""
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    img = np.full((height, width, 3), 255, np.uint8)
    n = max(len(means), 1)
    slot = width // n
    scale = (height - 20) / 100.0
    for i, (m, s) in enumerate(zip(means, stds)):
        x0, x1 = i * slot + slot // 5, (i + 1) * slot - slot // 5
        top = height - 10 - int(round(m * scale))
        img[max(top, 0):height - 10, x0:x1] = (76, 114, 176)
        lo, hi = height - 10 - int(round((m + s) * scale)), height - 10 - int(round((m - s) * scale))
        mid = (x0 + x1) // 2
        img[max(lo, 0):max(hi, 0) + 1, mid:mid + 2] = (0, 0, 0)
    img[height - 10, :] = 0
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values")
    p.add_argument("--out", default="experiments", help="directory for ablation.{md,json,png}")
    p.add_argument("--steps", type=int, default=0, help="train.num_steps of every run (0 = the config's)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(ALL_VARIANTS)}")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="base config file[:variant]")
    p.add_argument("--split", default="eval", choices=("eval", "dev"),
                   help="held-out split scored (dev: for tuning; eval: for reporting)")
    p.add_argument("--runs_dir", default="runs/ablation", help="workdirs of the runs (and the task)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (each on one thread)")
    p.add_argument("--no_pin", action="store_true", help="do not pin each parallel run to its own CPU")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra config override for every run, e.g. --set=laser.lambda_kl_out=1")
    p.add_argument("--task_dir", default="", help="an already generated task (laser_jax.data.synthetic) "
                   "to use instead of generating the config's into RUNS/data")
    p.add_argument("--notes", default="", help="a markdown file appended to ablation.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0, load0 = time.time(), _load()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown or not seeds:
        print(f"error: unknown variants {unknown} (known: {', '.join(ALL_VARIANTS)})" if unknown
              else "error: no seeds", file=sys.stderr)
        return 2
    config = resolve_config_path(args.config)
    base = dict(kv.split("=", 1) for kv in args.set)
    base = {k: _parse_value(v) for k, v in base.items()}
    if args.steps:
        base["train.num_steps"] = args.steps
    cfg = load_config(config, base)
    runs_dir = os.path.abspath(args.runs_dir)
    os.makedirs(runs_dir, exist_ok=True)

    from laser_jax.data import synthetic  # noqa: PLC0415

    if args.task_dir:
        meta = synthetic.read_meta(args.task_dir)
        if meta is None:
            print(f"error: {args.task_dir} holds no generated task (meta.json)", file=sys.stderr)
            return 2
        data = synthetic.paths(os.path.abspath(args.task_dir), meta["domains"], meta.get("dev_domains", ()))
    else:
        data = synthetic.ensure_generated(os.path.join(runs_dir, "data"), seed=cfg.data.synthetic_seed)
    if args.split not in data:
        print(f"error: the generated task has no {args.split}/ split", file=sys.stderr)
        return 2
    jobs = plan_jobs(variants, seeds, config, runs_dir, data, args.split, base,
                     max(cfg.eval.max_length, cfg.data.explicit_max_len), cfg.eval.batch_size)
    cpus = [] if args.no_pin else cpu_slots(args.parallel)
    run_jobs(jobs, args.parallel, child_env(args.parallel, os.path.join(runs_dir, "xla_cache")), cpus=cpus)
    summary = summarize_scores(jobs, variants, seeds)

    command = "python -m laser_jax.experiments.ablate " + " ".join(shlex.quote(a) for a in
                                                                    (argv if argv is not None else sys.argv[1:]))
    machine = machine_description()
    m, t = cfg.model, cfg.train
    budget = (f"{t.num_steps} steps x {t.batch_size} queries x {cfg.data.group_size} documents "
              f"(lr {t.learning_rate}, warm-up {t.warmup_ratio}), model {m.num_hidden_layers} layers x "
              f"hidden {m.hidden_size} (from scratch), K={cfg.laser.num_thinking_steps}, "
              f"lambda_kl_out={cfg.laser.lambda_kl_out}, lambda_kl_mid={cfg.laser.lambda_kl_mid}, "
              f"config {os.path.relpath(config.partition(':')[0], REPO_ROOT)}"
              + (f" with {', '.join(f'{k}={v}' for k, v in base.items())}" if base else ""))
    trained = [j for j in jobs if j.returncode == 0 and not j.reused]
    pinned = f", each pinned to one of cpus {cpus}" if cpus else ""
    timing = (f"{(time.time() - t0) / 60:.1f} min wall for the whole script with {args.parallel} runs in "
              f"parallel{pinned} (load average 1/5/15 min: {load0} at the start, {_load()} at the end); "
              f"{len(trained)} jobs ran, {sum(j.reused for j in jobs)} reused; mean job time "
              + ", ".join(f"{v} {np.mean([j.seconds for j in jobs if j.variant == v]):.0f}s"
                          for v in dict.fromkeys(j.variant for j in jobs)))
    failed = [j.name for j in jobs if j.returncode not in (0,)]
    if failed:
        timing += f"; FAILED: {', '.join(failed)}"
    notes = open(args.notes, encoding="utf-8").read() if args.notes else ""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(results_json(summary, seeds, command, machine), f, indent=2)
        f.write("\n")
    write_markdown(os.path.join(args.out, "ablation.md"), summary, seeds, command, machine, budget, timing,
                   args.split, notes)
    if summary:
        write_plot(os.path.join(args.out, "ablation.png"), summary,
                   f"nDCG@10 on {args.split}/, mean +- std over seeds {seeds}")
    print(open(os.path.join(args.out, "ablation.md"), encoding="utf-8").read())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
