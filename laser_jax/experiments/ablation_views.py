"""What an ablation reports beside the scores (issue 21): the pretrained LM's reasoning
accuracy on the scored split, the thoughts figure of the first seed's LaSER model, and the
latency table (its job is planned by ablate.latency_job); and which directory every scored job
reads (`scored_split`: the runs' `data.eval_dir` when the command narrows it).

Both are jobs of the ablation's plan (laser_jax.experiments.jobs), run by the project's own
commands after what they read:

  lm_reasoning  `python -m laser_jax.experiments.lm_eval` on the ablation's LM (RUNS/lm or
                --lm): greedy end-state accuracy per number of steps, written beside the LM
                (rerun when the LM changes: the job's config is the LM's identity);
  thoughts      `python -m laser_jax.experiments.thoughts --figure` on laser/seed<first>: how
                often soft step j's top token is the hop-j state (written into that run's
                workdir, so a retrained LaSER run drops it).
"""
from __future__ import annotations

import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from laser_jax.experiments.jobs import Job


def scored_split(data: dict, split: str, base: dict) -> Tuple[dict, str]:
    """(the task's paths with `split` pointing where the training runs evaluate, its label):
    `--set=data.eval_dir=DIR` narrows every scored job (derived evaluations, LM reasoning,
    thoughts, latency) to DIR, labelled relative to the task, e.g. "eval/steps3"."""
    narrowed = base.get("data.eval_dir")
    if not narrowed:
        return data, split
    path = os.path.abspath(str(narrowed))
    return {**data, split: path}, os.path.relpath(path, os.path.dirname(data[split]))


def lm_reasoning_job(lm: str, lm_tag: Optional[dict], after: Sequence[str], data: dict, split: str) -> Job:
    """The LM's greedy end-state accuracy on the scored split."""
    out = os.path.join(lm, f"ablation_lm_eval_{split}.json")
    argv = [sys.executable, "-m", "laser_jax.experiments.lm_eval", f"--model={lm}", f"--split_dir={data[split]}",
            f"--out={out}"]
    return Job("lm_reasoning", "lm_reasoning", 0, lm, argv, out, list(after), config={"lm": lm_tag},
               owns_workdir=False)


def thoughts_job(runs_dir: str, seed: int, data: dict, split: str, max_length: int) -> Job:
    """The thoughts figure of laser/seed<seed> on the scored split."""
    run = os.path.join(runs_dir, "laser", f"seed{seed}")
    md = os.path.join(run, f"thoughts_{split}.md")
    argv = [sys.executable, "-m", "laser_jax.experiments.thoughts", f"--model={run}", f"--data={data[split]}",
            "--figure", f"--output={md}", f"--max_length={max_length}"]
    return Job("thoughts", "thoughts", seed, run, argv, os.path.splitext(md)[0] + ".json", [f"laser/seed{seed}"],
               owns_workdir=False)


def read_latency(jobs: List[Job]) -> Optional[dict]:
    """The latency job's table, or None when it did not run or failed."""
    job = next((j for j in jobs if j.variant == "latency"), None)
    if job is None or job.returncode != 0 or not os.path.isfile(job.result):
        return None
    with open(job.result) as f:
        return json.load(f)


def read_views(jobs: List[Job]) -> dict:
    """{"lm_reasoning": lm_eval's result, "thoughts": the figure} for the jobs that ran."""
    views = {}
    for job in jobs:
        if job.variant in ("lm_reasoning", "thoughts") and job.returncode == 0 and os.path.isfile(job.result):
            with open(job.result, encoding="utf-8") as f:
                views[job.variant] = json.load(f)
    if "lm_reasoning" in views:  # ablation.json's "lm": {"reasoning_accuracy", "per_domain", ...}
        lm = views.pop("lm_reasoning")
        lm.pop("examples", None)
        views["lm"] = {"reasoning_accuracy": lm.pop("accuracy"), **lm}
    return views


def view_lines(views: dict, split: str) -> List[str]:
    """Markdown sections for read_views()."""
    lines: List[str] = []
    lm = views.get("lm")
    if lm:
        per = " | ".join(f"{100 * a:.1f}" for a in lm["per_domain"].values())
        lines += ["", "## The pretrained LM's reasoning", "",
                  f"Greedy end-{lm.get('answer', 'state')} accuracy of the LM every variant starts from "
                  f"(`lm.reasoning_accuracy`, {lm['n']} queries of {split}/, per number of steps):",
                  "", "| all | " + " | ".join(lm["per_domain"]) + " | exact reasoning |",
                  "|---|" + "---|" * len(lm["per_domain"]) + "---|",
                  f"| {100 * lm['reasoning_accuracy']:.1f} | {per} | {100 * lm['exact']:.1f} |"]
    figure = views.get("thoughts")
    if figure:
        from laser_jax.experiments.thoughts import format_figure

        lines += ["", "## What the soft steps carry (the first seed's LaSER model)", "",
                  format_figure(figure).replace(figure["data"], f"{split}/")]
    return lines
