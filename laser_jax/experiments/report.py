"""The ablation's results: scores per variant and seed, the JSON summary, the markdown
table and the plot."""
from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from laser_jax.experiments.jobs import Job

METRIC = "ndcg@10"


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
    checks = [("laser", "latent_only"), ("latent_only", "basic"), ("explicit_upper", "laser"),
              ("laser", "rewrite_then_retrieve"), ("laser", "pause"), ("latent_only", "pause_latent_only")]
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
    return f"{os.cpu_count()} CPU cores ({model}), {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}, jax {jax.__version__}"


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def latency_lines(latency: dict, labels: Optional[Dict[str, str]] = None) -> list:
    """The efficiency table (markdown lines) of `laser_jax.experiments.latency`'s result."""
    labels = labels or {}
    keys = list(next(iter(latency.values())))
    lines = ["## Retrieval latency", "",
             "Per-query time from the formatted query to its embedding on this machine's CPU (median "
             "after a compiling warm-up; batch time / batch size), on the first seed's LaSER model "
             "(basic: the same model at K=1), in the ablation's job environment (with --parallel > 1 "
             "XLA runs on one thread per job, this one too).", "",
             "| variant | " + " | ".join(f"{k} ms/query | {k} x basic" for k in keys) + " |",
             "|---|" + "---|---|" * len(keys)]
    for variant, row in latency.items():
        lines.append(f"| {labels.get(variant, variant)} | " + " | ".join(
            f"{row[k]['ms_per_query']:.2f} | {row[k]['ratio_to_basic']:.2f}" for k in keys) + " |")
    return lines + [""]


def write_markdown(path: str, summary: dict, seeds, command: str, machine: str, budget: str,
                   timing: str, split: str, notes: str = "", labels: Optional[Dict[str, str]] = None,
                   latency: Optional[dict] = None) -> None:
    """ablation.md: the table (a row per variant, `labels` naming them), the ordering verdict,
    the latency table (when measured) and the set-up."""
    labels = labels or {}
    domains = sorted({d for s in summary.values() for d in s["per_domain"]})
    lines = [f"# LaSER ablations on the synthetic task ({split} split)", "",
             f"nDCG@10 (x100) on the held-out `{split}/` queries (all domains averaged, then "
             f"per domain), mean +- sample std over seeds {list(seeds)}.", "",
             "| variant | nDCG@10 mean +- std | " + " | ".join(domains) + " | per seed |",
             "|---|---|" + "---|" * len(domains) + "---|"]
    for variant, s in summary.items():
        per_seed = ", ".join(f"{100 * v:.1f}" for v in s["per_seed"])
        lines.append(f"| {labels.get(variant, variant)} | {100 * s['mean']:.1f} +- {100 * s['std']:.1f} | "
                     + " | ".join(f"{100 * s['per_domain'].get(d, float('nan')):.1f}" for d in domains)
                     + f" | {per_seed} |")
    lines += ["", f"Ordering: {ordering_verdict(summary)}.", ""]
    if latency:
        lines += latency_lines(latency, labels)
    lines += ["## Set-up", "", f"- command: `{command}`", f"- machine: {machine}",
              f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
              f"- budget (every variant and seed): {budget}", f"- timing: {timing}", ""]
    if notes:
        lines += [notes.rstrip(), ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_plot(path: str, summary: dict, title: str) -> None:
    """Bar chart of the means with std error bars and the per-seed points (PNG)."""
    # matplotlib is heavy and only this picture needs it: imported here, not with the module.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    means = np.array([100 * summary[n]["mean"] for n in names])
    stds = np.array([100 * summary[n]["std"] for n in names])
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4.2))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=["#999999" if n in ("basic", "latent_only", "pause", "pause_latent_only") else
                                                   "#55a868" if n == "explicit_upper" else
                                                   "#dd8452" if n == "rewrite_then_retrieve" else "#4c72b0"
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
