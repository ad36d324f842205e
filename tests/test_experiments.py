"""laser_jax.experiments: the ablation script on a micro budget, the explicit upper bound."""
import contextlib
import io
import json
import os
import sys
import threading
import time

import numpy as np
import pytest

from laser_jax.data import synthetic
from laser_jax.experiments import ablate, jobs as jobs_lib, report
from laser_jax.experiments.explicit_upper import ExplicitEncoder, evaluate_explicit_upper, read_reasoning

MICRO_TASK = dict(size=20, n_train=48, n_eval_per_domain=3, n_dev_per_domain=3, vocab_size=400)
MICRO_MODEL = ["--set=model.hidden_size=16", "--set=model.intermediate_size=32", "--set=model.head_dim=4",
               "--set=model.num_hidden_layers=1", "--set=train.batch_size=4",
               "--set=mesh.num_devices=1"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return synthetic.generate(str(tmp_path_factory.mktemp("task") / "data"), seed=0, **MICRO_TASK)


@pytest.fixture(scope="module")
def micro(task, tmp_path_factory):
    """A 2-step ablation of two variants and one seed through the real trainer (subprocesses,
    two at a time), on the tiny config's :smoke variant shrunk further: its LM pretrained
    once (3 steps) into RUNS/lm by the first job, both variants started from it,
    rewrite-then-retrieve written by it, and the latency table."""
    root = tmp_path_factory.mktemp("ablation")
    out, runs = str(root / "out"), str(root / "runs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = ablate.main(["ablate", "--seeds=0", "--variants=basic,laser,rewrite_then_retrieve", "--steps=2",
                            f"--out={out}", f"--runs_dir={runs}", f"--task_dir={os.path.dirname(task['meta'])}",
                            "--config=configs/tiny.py:smoke", "--split=dev", "--parallel=2",
                            "--set=pretrain.eval=false", *MICRO_MODEL])
    return code, out, runs, printed.getvalue()


def test_the_ablation_pretrains_one_lm_and_every_variant_starts_from_it(micro):
    """Two variants started together after the one LM job: both from RUNS/lm, neither trains an LM."""
    code, out, runs, printed = micro
    assert code == 0, printed[-3000:]
    lm = os.path.join(runs, "lm")
    assert json.load(open(os.path.join(lm, "stage.json")))["done"]
    assert open(os.path.join(runs, "log_lm.txt")).read().count("starting causal-LM pretraining") == 1
    lines = printed.splitlines()
    lm_done = lines.index(next(line for line in lines if line.startswith("[ablate] lm: done")))
    for variant in ("basic", "laser"):
        started = lines.index(next(line for line in lines if line.startswith(f"[ablate] {variant}/seed0: starting")))
        assert started > lm_done  # after the LM job, never beside it
        cfg = json.load(open(os.path.join(runs, variant, "seed0", "run_config.json")))
        assert cfg["model"]["init_from"] == lm
        assert "stage 1/2" not in open(os.path.join(runs, variant, "seed0", "log_eval_results.txt")).read()
    rewrite_log = open(os.path.join(runs, "laser", "seed0", "log_rewrite_then_retrieve_dev.txt")).read()
    assert f"--lm={lm}" in rewrite_log.splitlines()[0]
    assert f"from the pretrained LM {lm}" in open(os.path.join(out, "ablation.md")).read()


def test_two_lm_jobs_on_one_directory_never_write_it_together(tmp_path):
    """The LM job's lock: a second holder waits until the first is done."""
    from laser_jax.experiments.pretrain_lm import exclusive

    path, events = str(tmp_path / "lm.lock"), []
    first_in = threading.Event()

    def second():
        first_in.wait()
        with exclusive(path, say=lambda line: events.append("waiting")):
            events.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with exclusive(path):
        first_in.set()
        time.sleep(0.5)
        events.append("first out")
    thread.join(10)
    assert events == ["waiting", "first out", "second in"]


def test_micro_ablation_writes_json_markdown_and_plot(micro):
    code, out, runs, _ = micro
    assert code == 0, open(os.path.join(runs, "laser", "seed0", "log_eval_results.txt")).read()[-3000:]
    with open(os.path.join(out, "ablation.json")) as f:
        result = json.load(f)
    assert set(result) == {"metric", "seeds", "variants", "command", "machine", "latency", "lm", "thoughts"}
    lm_eval = result["lm"]  # the one LM's greedy reasoning on the scored split, per number of steps
    assert 0.0 <= lm_eval["reasoning_accuracy"] <= 1.0 and "steps2" in lm_eval["per_domain"]
    assert result["thoughts"]["K"] == 3 and [s["step"] for s in result["thoughts"]["steps"]] == [1, 2]
    assert result["metric"] == "ndcg@10" and result["seeds"] == [0]
    assert set(result["variants"]) == {"basic", "laser", "rewrite_then_retrieve"}
    assert set(result["latency"]) == {"basic", "laser", "rewrite_then_retrieve"}
    assert set(result["latency"]["laser"]) == {"batch1", "batch64"}
    assert result["latency"]["basic"]["batch64"]["ratio_to_basic"] == 1.0
    for v in result["variants"].values():
        assert set(v) == {"mean", "std", "per_seed"}
        assert len(v["per_seed"]) == 1 and 0.0 <= v["mean"] <= 1.0 and v["std"] == 0.0
        assert v["mean"] == pytest.approx(v["per_seed"][0])
    assert "ablate" in result["command"] and "CPU" in result["machine"]
    md = open(os.path.join(out, "ablation.md")).read()
    assert "| LaSER |" in md and "steps2" in md and "2 steps x 4 queries" in md
    assert "| rewrite-then-retrieve (LM reasoning + explicit view) |" in md and "## Retrieval latency" in md
    assert "## The pretrained LM's reasoning" in md and "| soft step j |" in md
    assert md.index("## Retrieval latency") < md.index("## The pretrained LM's reasoning")
    assert os.path.isfile(os.path.join(runs, "rewrite_cache", "dev", "steps2.jsonl"))
    with open(os.path.join(out, "ablation.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # both runs trained the asked budget through the trainer, K=1 for basic
    for variant, k in (("basic", 1), ("laser", 3)):
        cfg = json.load(open(os.path.join(runs, variant, "seed0", "run_config.json")))
        assert cfg["train"]["num_steps"] == 2 and cfg["laser"]["num_thinking_steps"] == k
        assert cfg["data"]["eval_dir"].endswith("dev")


def test_finished_runs_are_reused(micro, task):
    _, out, runs, _ = micro
    logs = []
    jobs = ablate.plan_jobs(["basic"], [0], ablate.resolve_config_path("configs/tiny.py:smoke"), runs,
                            synthetic.paths(os.path.dirname(task["meta"]), ["steps2"]), "eval", {}, 64, 8)
    assert not jobs[0].done_before()  # another command (eval split, no overrides): not the same run
    marker = json.load(open(os.path.join(runs, "basic", "seed0", "ablation_command_eval_results.json")))
    jobs[0].argv = marker["argv"]
    assert marker["config"]["train"]["num_steps"] == 2 and marker["config"]["model"]["hidden_size"] == 16
    assert not jobs[0].done_before()  # same command line, another config: an edited config file reruns
    jobs[0].config = marker["config"]
    jobs_lib.run_jobs(jobs, 1, {}, log=logs.append)
    assert jobs[0].reused and jobs[0].returncode == 0 and "reusing" in logs[0]


def test_explicit_upper_on_the_trained_micro_model(micro, task):
    _, _, runs, _ = micro
    results = evaluate_explicit_upper(os.path.join(runs, "laser", "seed0"), task["dev"], max_length=128,
                                      batch_size=4)
    assert [r.name for r in results] == ["steps2", "steps3", "steps4"]
    for r in results:
        assert r.num_queries == MICRO_TASK["n_dev_per_domain"]
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in r.metrics.values())


def test_explicit_encoder_formats_like_training_and_reads_gold_reasoning(micro, task):
    from laser_jax.inference.encoder import default_dtype
    from laser_jax.inference.load import load_for_inference

    _, _, runs, _ = micro
    loaded = load_for_inference(os.path.join(runs, "laser", "seed0"), default_dtype())
    enc = ExplicitEncoder(loaded)
    gold = read_reasoning(task["eval/steps2"])
    queries = [json.loads(line) for line in open(os.path.join(task["eval/steps2"], "queries.jsonl"))]
    assert set(gold) == {q["id"] for q in queries}
    instr = json.load(open(task["domains"]))["steps2"]
    texts = enc.texts([queries[0]["query"]], [gold[queries[0]["id"]]], instr)
    assert texts == [f"Instruct: {instr}\nQuery: {queries[0]['query']}{gold[queries[0]['id']]}"]
    emb = enc.encode([q["query"] for q in queries], [gold[q["id"]] for q in queries], instr, batch_size=2)
    assert emb.shape == (len(queries), loaded.cfg.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # batching and order do not change a row
    alone = enc.encode([queries[1]["query"]], [gold[queries[1]["id"]]], instr, batch_size=1)
    np.testing.assert_allclose(alone[0], emb[1], atol=1e-5)


def test_summaries_and_ordering_verdict():
    jobs = []
    for variant, values in {"basic": [0.2, 0.25], "latent_only": [0.3, 0.32], "laser": [0.5, 0.52]}.items():
        for seed, v in enumerate(values):
            job = jobs_lib.Job(f"{variant}/seed{seed}", variant, seed, "", [], "")
            job.returncode = 0
            jobs.append((job, v))
    scores = {id(j): {"average": v, "domains": {"steps2": v, "steps3": v}} for j, v in jobs}
    original = report.read_score
    try:
        report.read_score = lambda job: scores[id(job)]
        summary = report.summarize_scores([j for j, _ in jobs], ["basic", "latent_only", "laser"], [0, 1])
    finally:
        report.read_score = original
    assert summary["laser"]["mean"] == pytest.approx(0.51)
    assert summary["laser"]["std"] == pytest.approx(np.std([0.5, 0.52], ddof=1))
    assert summary["basic"]["per_domain"] == {"steps2": pytest.approx(0.225), "steps3": pytest.approx(0.225)}
    assert report.beats(summary, "laser", "latent_only") and report.beats(summary, "latent_only", "basic")
    assert report.beats(summary, "explicit_upper", "laser") is None
    shaped = report.results_json(summary, [0, 1], "cmd", "machine")
    assert set(shaped["variants"]["laser"]) == {"mean", "std", "per_seed"}


def test_no_co_learning_trains_a_teacher_first(task):
    jobs = ablate.plan_jobs(["no_co_learning", "laser", "explicit_upper"], [3], "configs/tiny.py", "/r",
                            synthetic.paths(os.path.dirname(task["meta"]), ["steps2"]), "eval", {}, 64, 8)
    names = [j.name for j in jobs]
    assert names == ["explicit_teacher/seed3", "no_co_learning/seed3", "laser/seed3", "explicit_upper/seed3"]
    teacher, student, _, upper = jobs
    assert "--config.laser.lambda_latent=0.0" in teacher.argv and "--config.data.eval_dir=" in teacher.argv
    assert f"--config.laser.teacher_from={teacher.workdir}" in student.argv
    assert student.deps == ["explicit_teacher/seed3"] and upper.deps == ["laser/seed3"]
    assert "--config.train.seed=3" in student.argv


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "bars.png")
    summary = {v: {"mean": m, "std": s, "per_seed": [m - s, m + s]}
               for v, m, s in (("basic", 0.1, 0.02), ("laser", 0.5, 0.05))}
    report.write_plot(path, summary, "title")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")


def test_parallel_runs_are_pinned_to_distinct_cpus(tmp_path):
    """Each running job holds its own CPU (sched_setaffinity in the child); a finished job's
    CPU goes to the next one."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and 2 CPUs")
    cpus = jobs_lib.cpu_slots(2)
    assert len(cpus) == 2 and set(cpus) <= os.sched_getaffinity(0)
    assert jobs_lib.cpu_slots(1) == [] and jobs_lib.cpu_slots(10 ** 4) == []
    script = ("import os, sys, time; time.sleep(0.5); "
              "open(sys.argv[1], 'w').write(str(sorted(os.sched_getaffinity(0))))")
    jobs = []
    for i in range(3):
        out = str(tmp_path / f"j{i}" / "affinity.txt")
        jobs.append(jobs_lib.Job(f"j{i}", "basic", i, os.path.dirname(out), [sys.executable, "-c", script, out], out))
    jobs_lib.run_jobs(jobs, 2, dict(os.environ), log=lambda _: None, cpus=cpus)
    seen = [json.loads(open(j.result).read()) for j in jobs]
    assert all(j.returncode == 0 for j in jobs)
    assert all(len(s) == 1 and s[0] in cpus for s in seen)
    assert seen[0] != seen[1]  # the first two ran at the same time


def test_a_narrowed_eval_dir_narrows_every_scored_job_and_names_itself():
    from laser_jax.experiments import ablation_views
    from laser_jax.experiments.ablation_views import scored_split

    data = {"train": "/t/train", "eval": "/t/eval", "tokenizer": "/t/tok"}
    assert scored_split(data, "eval", {"train.num_steps": 3}) == (data, "eval")
    narrowed, label = scored_split(data, "eval", {"data.eval_dir": "/t/eval/steps3"})
    assert narrowed == {**data, "eval": "/t/eval/steps3"} and label == "eval/steps3"
    jobs = [ablation_views.thoughts_job("/runs", 0, narrowed, "eval", 64),
            ablation_views.lm_reasoning_job("/runs/lm", None, [], narrowed, "eval")]
    assert all(any(a.endswith("=/t/eval/steps3") for a in job.argv) for job in jobs)
