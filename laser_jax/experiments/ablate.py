"""LaSER's ablations (paper Table 5) on the embedded synthetic task, over several seeds.

    python -m laser_jax.experiments.ablate [--seeds=0,1,2] [--out=experiments/] [--steps=N]

Every variant is trained by the project's trainer (`python -m laser_jax.train
--config=configs/tiny.py` with `--config.*` overrides, as subprocesses, `--parallel` at a
time, each on one CPU thread) at the same budget: the same steps, batch and data for every
variant and seed; the seed (`train.seed`) sets the initialisation, dropout and data order.
The task is generated once (`data.synthetic_task` with `data.synthetic_options`, seed
`data.synthetic_seed`) into RUNS/data, or given (`--task_dir`).
One pretrained LM, every variant from it: when the config has a pretraining stage
(`pretrain.num_steps` > 0, as configs/tiny.py does), the LM is pretrained ONCE into RUNS/lm
(laser_jax.experiments.pretrain_lm: the stage of `python -m laser_jax.train` alone, reused
when its stage config and task are unchanged), as one job that every training job waits
for (and under a lock on RUNS/lm.lock, so even two ablations on one RUNS never write it
together); every trained variant (and the no-co-learning teacher) starts from it
(`model.init_from`), and rewrite_then_retrieve's reasoning is written by it. `--lm=DIR`
names an existing LM to use instead (nothing is pretrained); `--set=pretrain.num_steps=0`
trains every variant from random weights (and leaves rewrite_then_retrieve out). Each trained model
is scored on the held-out split (`--split=eval`, the default; `--split=dev` is the
development split, for tuning). Variants:

  basic                   K=1, no explicit view (an ordinary last-token dense retriever)
  latent_only             K latent steps, no explicit view (GIRCSE-like)
  laser                   the full method (the config as it is)
  no_process_alignment    laser.lambda_kl_mid=0
  no_output_distillation  laser.lambda_kl_out=0
  no_co_learning          a teacher trained on the explicit view alone (lambda_latent=0, no KL),
                          then a student distilled from it frozen (laser.teacher_from)
  pause                   LaSER's losses, but every soft step is fed one learned vector
                          (laser.soft_token=pause): the same K positions without the soft tokens'
                          content, the control for "extra compute alone" (issue 23)
  pause_latent_only       latent_only with pause steps
  explicit_upper          the trained `laser` models' explicit view fed the gold reasoning
                          (laser_jax.experiments.explicit_upper): an upper bound
  rewrite_then_retrieve   the trained `laser` models' explicit view fed reasoning written by the
                          pretrained language model (RUNS/lm or --lm; laser_jax.experiments.rewrite):
                          the baseline LaSER replaces; the LM writes once for all seeds

With --latency (the default) the per-query retrieval time of basic (K=1), LaSER (the latent
view) and rewrite-then-retrieve (with --lm) is measured once, on the first seed's `laser`
model, after every other job (laser_jax.experiments.latency), into ablation.json's "latency"
and a table in ablation.md.

Outputs in OUT: ablation.json ({"metric", "seeds", "variants": {name: {mean, std,
per_seed}}, "command", "machine"}, and "latency" when measured), ablation.md (table with per-domain means, the command,
machine, date, budget and timings) and ablation.png. Runs live in RUNS (default
runs/ablation); a run whose workdir already holds results for the same command is reused.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import flags

from laser_jax import workdir_lock
from laser_jax.cli import define_help, run_cli
from laser_jax.data import synthetic
from laser_jax.experiments.jobs import REPO_ROOT, Job, child_env, cpu_slots, run_jobs
from laser_jax.experiments.rewrite import lm_fingerprint
from laser_jax.experiments.report import (load_average, machine_description, results_json, summarize_scores,
                                          write_markdown, write_plot)
from laser_jax.experiments.ablation_views import (lm_reasoning_job, read_latency, read_views, scored_split,
                                                  thoughts_job, view_lines)
from laser_jax.experiments.start_lm import StartLM, config_flag_args, pretrained_lm_dir, start_lm

DEFAULT_CONFIG = "configs/tiny.py"
NO_EXPLICIT = {"laser.lambda_explicit": 0.0, "laser.lambda_kl_out": 0.0, "laser.lambda_kl_mid": 0.0}
# Training variants: config overrides on top of the base config.
VARIANTS: Dict[str, dict] = {
    "basic": {"laser.num_thinking_steps": 1, **NO_EXPLICIT},
    "latent_only": dict(NO_EXPLICIT),
    "laser": {},
    "no_process_alignment": {"laser.lambda_kl_mid": 0.0},
    "no_output_distillation": {"laser.lambda_kl_out": 0.0},
    "no_co_learning": {},  # + laser.teacher_from=<its teacher's run>
    "pause": {"laser.soft_token": "pause"},
    "pause_latent_only": {"laser.soft_token": "pause", **NO_EXPLICIT},
}
TEACHER = {"laser.lambda_latent": 0.0, "laser.lambda_kl_out": 0.0, "laser.lambda_kl_mid": 0.0,
           "data.eval_dir": ""}
DERIVED = ("explicit_upper", "rewrite_then_retrieve")  # evaluated from the `laser` runs, no training
DERIVED_MODULES = {"explicit_upper": "laser_jax.experiments.explicit_upper",
                   "rewrite_then_retrieve": "laser_jax.experiments.rewrite"}
ALL_VARIANTS = tuple(VARIANTS) + DERIVED
DEFAULT_VARIANTS = ALL_VARIANTS
LABELS = {"basic": "basic contrastive (K=1)", "latent_only": "latent only (K=3, no explicit view)",
          "laser": "LaSER", "no_process_alignment": "w/o process alignment (lambda_kl_mid=0)",
          "no_output_distillation": "w/o output distillation (lambda_kl_out=0)",
          "no_co_learning": "w/o co-learning (frozen explicit teacher)",
          "pause": "LaSER with pause steps (one learned vector per soft step)",
          "pause_latent_only": "latent only with pause steps",
          "explicit_upper": "explicit view + gold reasoning (upper bound)",
          "rewrite_then_retrieve": "rewrite-then-retrieve (LM reasoning + explicit view)"}


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


# ----------------------------------------------------------------------------- jobs
def train_argv(config: str, workdir: str, overrides: dict) -> List[str]:
    return [sys.executable, "-m", "laser_jax.train", f"--config={config}", f"--workdir={workdir}",
            *config_flag_args(overrides)]


def derived_job(variant: str, seed: int, seeds: Sequence[int], variants: Sequence[str], runs_dir: str,
                data: dict, split: str, eval_max_length: int, eval_batch_size: int, lm: str = "",
                start: Optional[StartLM] = None) -> Job:
    """The evaluation of a derived variant (DERIVED) on the seed's trained `laser` run."""
    laser_run = os.path.join(runs_dir, "laser", f"seed{seed}")
    out = os.path.join(laser_run, f"{variant}_{split}.json")
    argv = [sys.executable, "-m", DERIVED_MODULES[variant], f"--model={laser_run}", f"--data={data[split]}",
            f"--output={out}", f"--max_length={eval_max_length}", f"--batch_size={eval_batch_size}"]
    deps = [f"laser/seed{seed}"] if "laser" in variants else []
    config = None
    if variant == "rewrite_then_retrieve":
        argv += [f"--lm={lm}", f"--cache_dir={os.path.join(runs_dir, 'rewrite_cache', split)}"]
        if start is not None and start.path == lm:  # the LM the ablation pretrains (or was given)
            config = {"lm": start.tag}
            deps += [start.job] if start.job else []
        else:
            config = {"lm": lm_fingerprint(lm) if os.path.isdir(lm) else None}  # a rewritten LM reruns
        if seed != seeds[0]:  # the first seed's job writes the cache the others read
            deps.append(f"{variant}/seed{seeds[0]}")
    return Job(f"{variant}/seed{seed}", variant, seed, laser_run, argv, out, deps, config=config,
               owns_workdir=False)


def latency_job(jobs: List[Job], seeds: Sequence[int], runs_dir: str, data: dict, split: str, lm: str,
                max_length: int) -> Job:
    """The latency measurement on the first seed's `laser` run, after every other job (alone)."""
    out = os.path.join(runs_dir, "latency.json")
    argv = [sys.executable, "-m", "laser_jax.experiments.latency",
            f"--model={os.path.join(runs_dir, 'laser', f'seed{seeds[0]}')}", f"--data={data[split]}",
            f"--output={out}", f"--max_length={max_length}"] + ([f"--lm={lm}"] if lm else [])
    job = Job("latency", "latency", seeds[0], runs_dir, argv, out, [j.name for j in jobs], owns_workdir=False)
    if os.path.exists(job.marker):
        os.remove(job.marker)  # timings are measured again by every ablation run, never reused
    return job


def plan_jobs(variants: Sequence[str], seeds: Sequence[int], config: str, runs_dir: str, data: dict,
              split: str, base: dict, eval_max_length: int, eval_batch_size: int, lm: str = "",
              start: Optional[StartLM] = None, first: Sequence[Job] = ()) -> List[Job]:
    """Jobs for every (variant, seed), with the teacher runs and the derived evaluations,
    after `first` (the LM's job); with `start`, every training job starts from that LM."""
    data_overrides = {"data.synthetic": False, "data.train_files": data["train"],
                      "model.tokenizer": data["tokenizer"], "data.eval_dir": data[split]}
    if start is not None:
        data_overrides["model.init_from"] = start.path
    after = [start.job] if start is not None and start.job else []
    tag = {"start_lm": start.tag} if start is not None else {}
    jobs = list(first)
    for variant in variants:
        for seed in seeds:
            run = os.path.join(runs_dir, variant, f"seed{seed}")
            common = {**data_overrides, **base, "train.seed": seed}
            if variant in DERIVED:
                jobs.append(derived_job(variant, seed, seeds, variants, runs_dir, data, split, eval_max_length,
                                        eval_batch_size, lm, start))
                continue
            overrides = {**common, **VARIANTS[variant]}
            deps = list(after)
            if variant == "no_co_learning":
                teacher = os.path.join(runs_dir, "explicit_teacher", f"seed{seed}")
                t_over = {**common, **TEACHER}
                jobs.append(Job(f"explicit_teacher/seed{seed}", "explicit_teacher", seed, teacher,
                                train_argv(config, teacher, t_over), os.path.join(teacher, "run_config.json"),
                                list(after), config={**resolved_config(config, t_over), **tag}))
                overrides["laser.teacher_from"] = teacher
                deps.append(f"explicit_teacher/seed{seed}")
            jobs.append(Job(f"{variant}/seed{seed}", variant, seed, run, train_argv(config, run, overrides),
                            os.path.join(run, "eval_results.json"), deps,
                            config={**resolved_config(config, overrides), **tag}))
    return jobs


def resolved_config(config: str, overrides: dict) -> dict:
    """The config a training job will run, as JSON values (what a reused run must match)."""
    return json.loads(json.dumps(load_config(config, overrides).to_dict(), sort_keys=True))


# ----------------------------------------------------------------------------- main
FLAGS = flags.FlagValues()
flags.DEFINE_string("seeds", "0,1,2", "comma-separated train.seed values", flag_values=FLAGS)
flags.DEFINE_string("out", "experiments", "directory for ablation.{md,json,png}", flag_values=FLAGS)
flags.DEFINE_integer("steps", 0, "train.num_steps of every run (0 = the config's)", flag_values=FLAGS)
flags.DEFINE_string("variants", ",".join(DEFAULT_VARIANTS), f"comma-separated, from {', '.join(ALL_VARIANTS)}",
                    flag_values=FLAGS)
flags.DEFINE_string("config", DEFAULT_CONFIG, "base config file[:variant]", flag_values=FLAGS)
flags.DEFINE_enum("split", "eval", ["eval", "dev"], "held-out split scored (dev: for tuning; eval: for reporting)",
                  flag_values=FLAGS)
flags.DEFINE_string("runs_dir", "runs/ablation", "workdirs of the runs (and the task)", flag_values=FLAGS)
flags.DEFINE_integer("parallel", 2, "runs at a time (each on one thread)", flag_values=FLAGS)
flags.DEFINE_boolean("no_pin", False, "do not pin each parallel run to its own CPU", flag_values=FLAGS)
flags.DEFINE_multi_string("set", [], "extra config override FIELD=VALUE for every run, e.g. "
                          "--set=laser.lambda_kl_out=1", flag_values=FLAGS)
flags.DEFINE_string("task_dir", "", "an already generated task (laser_jax.data.synthetic) to use instead of "
                    "generating the config's into RUNS/data", flag_values=FLAGS)
flags.DEFINE_string("notes", "", "a markdown file appended to ablation.md", flag_values=FLAGS)
flags.DEFINE_string("lm", "", "an already pretrained language model (HF directory of the config's architecture) "
                    "that every trained variant starts from and that writes the reasoning of "
                    "rewrite_then_retrieve (and is timed by --latency); default: the config's pretraining stage "
                    "run once into RUNS/lm", flag_values=FLAGS)
flags.DEFINE_boolean("latency", True, "measure per-query retrieval time (basic, laser, rewrite_then_retrieve) "
                     "once, on the first seed's laser run", flag_values=FLAGS)
define_help(FLAGS)


def _variants(f, lm: str) -> Optional[List[str]]:
    """--variants, checked (None after an error line). rewrite_then_retrieve needs an LM: asked
    for without one it is an error; in the default list it is left out with a note."""
    variants = [v.strip() for v in f.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        print(f"error: unknown variants {unknown} (known: {', '.join(ALL_VARIANTS)})", file=sys.stderr)
        return None
    if "rewrite_then_retrieve" in variants and not lm:
        if f["variants"].present:
            print("error: the variant rewrite_then_retrieve needs a pretrained language model: give --lm=HF_DIR",
                  file=sys.stderr)
            return None
        print("[ablate] no --lm: rewrite_then_retrieve left out", file=sys.stderr)
        variants.remove("rewrite_then_retrieve")
    return variants


def _task(f, runs_dir: str, cfg) -> Optional[dict]:
    """The task's paths (--task_dir, or generated into RUNS/data); None (after an error
    line) when --task_dir holds none or the split is missing."""
    if f.task_dir:
        meta = synthetic.read_meta(f.task_dir)
        if meta is None:
            print(f"error: {f.task_dir} holds no generated task (meta.json)", file=sys.stderr)
            return None
        data = synthetic.paths_from_meta(f.task_dir, meta)
    else:
        data = synthetic.ensure_generated(os.path.join(runs_dir, "data"), **synthetic.config_args(cfg.data))
    if f.split not in data:
        print(f"error: the generated task has no {f.split}/ split", file=sys.stderr)
        return None
    return data


def _command(f, argv: Sequence[str]) -> int:
    t0, load0 = time.time(), load_average()
    seeds = [int(s) for s in f.seeds.split(",") if s.strip()]
    runs_dir = os.path.abspath(f.runs_dir)
    config = resolve_config_path(f.config)
    base = {k: _parse_value(v) for k, v in (kv.split("=", 1) for kv in f.set)}
    if f.steps:
        base["train.num_steps"] = f.steps
    cfg = load_config(config, base)
    lm = pretrained_lm_dir(f, runs_dir, cfg)
    variants = _variants(f, lm)
    if variants is None or not seeds or (f.lm and not os.path.isdir(lm)):
        if variants is not None:
            print("error: no seeds" if not seeds else f"error: --lm: {lm}: no such directory", file=sys.stderr)
        return 2
    os.makedirs(runs_dir, exist_ok=True)
    data = _task(f, runs_dir, cfg)
    if data is None:
        return 2
    data, scored = scored_split(data, f.split, base)
    start, first = start_lm(lm, bool(f.lm), config, runs_dir, data, base, cfg)
    max_length = max(cfg.eval.max_length, cfg.data.explicit_max_len)
    jobs = plan_jobs(variants, seeds, config, runs_dir, data, f.split, base, max_length, cfg.eval.batch_size, lm,
                     start, first)
    if lm and (start is None or start.path == lm):
        jobs.append(lm_reasoning_job(lm, start.tag if start else None, [start.job] if start and start.job else [],
                                     data, f.split))
    if "laser" in variants:
        jobs.append(thoughts_job(runs_dir, seeds[0], data, f.split, max_length))
    if f.latency and "laser" in variants:  # after every other job, the thoughts and LM evaluation too
        jobs.append(latency_job(jobs, seeds, runs_dir, data, f.split, lm, max_length))
    cpus = [] if f.no_pin else cpu_slots(f.parallel)
    run_jobs(jobs, f.parallel, child_env(f.parallel, os.path.join(runs_dir, "xla_cache")), cpus=cpus)
    summary = summarize_scores(jobs, variants, seeds)
    command = "python -m laser_jax.experiments.ablate " + " ".join(shlex.quote(a) for a in argv[1:])
    failed = [j.name for j in jobs if j.returncode not in (0,)]
    timing = _timing(jobs, t0, load0, f.parallel, cpus) + (f"; FAILED: {', '.join(failed)}" if failed else "")
    _write_results(f, summary, seeds, command, _budget(cfg, config, base, start), timing, read_latency(jobs),
                   read_views(jobs), scored)
    return 1 if failed else 0


def _budget(cfg, config: str, base: dict, start: Optional[StartLM] = None) -> str:
    m, t = cfg.model, cfg.train
    path, colon, variant = config.partition(":")
    origin = "from scratch"
    if start is not None:
        origin = f"from the pretrained LM {start.path}" + (
            f", {cfg.pretrain.num_steps} LM steps x {cfg.pretrain.batch_size} rows" if start.job else "")
    return (f"{t.num_steps} steps x {t.batch_size} queries x {cfg.data.group_size} documents "
            f"(lr {t.learning_rate}, warm-up {t.warmup_ratio}), model {m.num_hidden_layers} layers x "
            f"hidden {m.hidden_size} ({origin}), K={cfg.laser.num_thinking_steps}, "
            f"lambda_kl_out={cfg.laser.lambda_kl_out}, lambda_kl_mid={cfg.laser.lambda_kl_mid}, "
            f"config {os.path.relpath(path, REPO_ROOT)}{colon}{variant}"
            + (f" with {', '.join(f'{k}={v}' for k, v in base.items())}" if base else ""))


def _timing(jobs: List[Job], t0: float, load0: str, parallel: int, cpus: Sequence[int]) -> str:
    trained = [j for j in jobs if j.returncode == 0 and not j.reused]
    pinned = f", each pinned to one of cpus {cpus}" if cpus else ""
    return (f"{(time.time() - t0) / 60:.1f} min wall for the whole script with {parallel} runs in "
            f"parallel{pinned} (load average 1/5/15 min: {load0} at the start, {load_average()} at the end); "
            f"{len(trained)} jobs ran, {sum(j.reused for j in jobs)} reused; mean job time "
            + ", ".join(f"{v} {np.mean([j.seconds for j in jobs if j.variant == v]):.0f}s"
                        for v in dict.fromkeys(j.variant for j in jobs)))


def _write_results(f, summary: dict, seeds: List[int], command: str, budget: str, timing: str,
                   latency: Optional[dict], views: Optional[dict], scored: str) -> None:
    """ablation.json, ablation.md (printed) and ablation.png in --out; `scored` labels the
    scored split (`scored_split`)."""
    machine = machine_description()
    notes = open(f.notes, encoding="utf-8").read() if f.notes else ""
    os.makedirs(f.out, exist_ok=True)
    with open(os.path.join(f.out, "ablation.json"), "w") as out:
        result = results_json(summary, seeds, command, machine)
        json.dump({**result, **({"latency": latency} if latency else {}), **(views or {})}, out, indent=2)
        out.write("\n")
    md = os.path.join(f.out, "ablation.md")
    write_markdown(md, summary, seeds, command, machine, budget, timing, scored, notes, labels=LABELS,
                   latency=latency)
    if summary:
        try:
            write_plot(os.path.join(f.out, "ablation.png"), summary,
                       f"nDCG@10 on {scored}/, mean +- std over seeds {seeds}")
        except ImportError as e:  # matplotlib (requirements.txt) missing: the table and JSON stand
            print(f"[ablate] no ablation.png: {e}", file=sys.stderr)
    if views:
        with open(md, "a", encoding="utf-8") as out:
            out.write("\n".join(view_lines(views, scored)) + "\n")
    print(open(md, encoding="utf-8").read())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns 0, 1 when a job failed, 2 on
    bad flags or task."""
    argv = list(sys.argv if argv is None else argv)
    return run_cli(FLAGS, lambda f: _locked(f.runs_dir, lambda: _command(f, argv)), argv, allow_arguments=False,
                   expected_errors=())


def _locked(runs_dir: str, body) -> int:
    """body() while this process holds the runs directory's lock (issue 24: one ablation per
    runs directory; its training jobs lock their own workdirs inside it)."""
    try:
        with workdir_lock.held(runs_dir, "--runs_dir"):
            return body()
    except workdir_lock.LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
