"""The ablation's rewrite-then-retrieve and latency jobs, planned without training anything."""
import json
import os
import sys

from laser_jax.experiments import ablate, jobs as jobs_lib, report

DATA = {"dev": "/d/dev", "eval": "/d/eval", "train": "/d/train.jsonl", "tokenizer": "/d/tok"}


def test_rewrite_jobs_share_one_generation_and_keep_the_laser_run(tmp_path):
    runs = str(tmp_path / "runs")
    jobs = ablate.plan_jobs(["laser", "rewrite_then_retrieve"], [0, 1], "configs/tiny.py", runs, DATA, "dev",
                            {}, 64, 8, lm="/lm")
    by = {j.name: j for j in jobs}
    first, second = by["rewrite_then_retrieve/seed0"], by["rewrite_then_retrieve/seed1"]
    assert first.argv[1:3] == ["-m", "laser_jax.experiments.rewrite"]
    assert "--lm=/lm" in first.argv and f"--model={runs}/laser/seed0" in first.argv
    cache = f"--cache_dir={runs}/rewrite_cache/dev"
    assert cache in first.argv and cache in second.argv  # one cache for every seed
    assert first.deps == ["laser/seed0"] and second.deps == ["laser/seed1", "rewrite_then_retrieve/seed0"]
    assert first.result == f"{runs}/laser/seed0/rewrite_then_retrieve_dev.json"
    assert not first.owns_workdir and by["laser/seed0"].owns_workdir
    latency = ablate.latency_job(jobs, [0, 1], runs, DATA, "dev", "/lm", 64)
    assert latency.deps == [j.name for j in jobs] and not latency.owns_workdir
    assert f"--model={runs}/laser/seed0" in latency.argv and "--lm=/lm" in latency.argv


def test_an_evaluation_job_does_not_clear_the_run_it_reads(tmp_path):
    run = tmp_path / "laser" / "seed0"
    run.mkdir(parents=True)
    (run / "eval_results.json").write_text("{}")
    out = str(run / "rewrite_then_retrieve_dev.json")
    job = jobs_lib.Job("rewrite_then_retrieve/seed0", "rewrite_then_retrieve", 0, str(run),
                       [sys.executable, "-c", f"open({out!r}, 'w').write('{{}}')"], out, owns_workdir=False)
    jobs_lib.run_jobs([job], 1, dict(os.environ), log=lambda _: None)
    assert job.returncode == 0 and (run / "eval_results.json").exists() and os.path.isfile(out)


def test_rewrite_then_retrieve_without_an_lm(tmp_path, capsys):
    """No LM: the config pretrains none (pretrain.num_steps=0) and no --lm is given."""
    args = ["ablate", f"--runs_dir={tmp_path}/runs", f"--out={tmp_path}/out", "--set=pretrain.num_steps=0"]
    assert ablate.main(args + ["--variants=laser,rewrite_then_retrieve"]) == 2
    assert "rewrite_then_retrieve needs a pretrained language model: give --lm" in capsys.readouterr().err
    assert ablate.main(["ablate", f"--runs_dir={tmp_path}/runs", "--lm=no/such/lm"]) == 2
    assert "error: --lm: " in capsys.readouterr().err and not os.path.exists(tmp_path / "runs")
    ablate.FLAGS.unparse_flags()
    ablate.FLAGS(["ablate", "--lm=some/lm"])
    assert ablate.pretrained_lm_dir(ablate.FLAGS, "/runs") == os.path.abspath("some/lm")
    ablate.FLAGS.unparse_flags()
    ablate.FLAGS(["ablate"])
    assert ablate.pretrained_lm_dir(ablate.FLAGS, "/runs", ablate.load_config("configs/tiny.py")) == "/runs/lm"
    no_lm = ablate.load_config("configs/tiny.py", {"pretrain.num_steps": 0})
    assert ablate.pretrained_lm_dir(ablate.FLAGS, "/runs", no_lm) == ""
    assert ablate._variants(ablate.FLAGS, "") == [v for v in ablate.ALL_VARIANTS if v != "rewrite_then_retrieve"]
    ablate.FLAGS.unparse_flags()


def test_one_lm_job_first_and_every_training_job_from_its_lm(tmp_path):
    """Planned without training: the LM job, then every training job (the no-co-learning
    teacher too) waits for it and starts from RUNS/lm; rewrite-then-retrieve uses that LM."""
    from laser_jax.data import synthetic
    from laser_jax.experiments.start_lm import start_lm

    task = synthetic.generate(str(tmp_path / "data"), seed=0, size=20, n_train=48, n_eval_per_domain=3,
                              n_dev_per_domain=3, vocab_size=400)
    runs, config = str(tmp_path / "runs"), ablate.resolve_config_path("configs/tiny.py")
    base = {"train.num_steps": 7}
    cfg = ablate.load_config(config, base)
    start, first = start_lm(f"{runs}/lm", False, config, runs, task, base, cfg)
    assert [j.name for j in first] == ["lm"] and start.path == f"{runs}/lm" and start.job == "lm"
    lm = first[0]
    assert lm.argv[1:3] == ["-m", "laser_jax.experiments.pretrain_lm"] and f"--out={runs}/lm" in lm.argv
    assert f"--task_dir={tmp_path}/data" in lm.argv and "--config.train.num_steps=7" in lm.argv
    assert not lm.owns_workdir and lm.alone and lm.marker == f"{runs}/ablation_command_lm.json"
    jobs = ablate.plan_jobs(["no_co_learning", "laser", "rewrite_then_retrieve"], [0], config, runs, task, "dev",
                            base, 64, 8, start.path, start, first)
    by = {j.name: j for j in jobs}
    assert jobs[0] is lm
    for name in ("explicit_teacher/seed0", "no_co_learning/seed0", "laser/seed0"):
        assert "lm" in by[name].deps and f"--config.model.init_from={runs}/lm" in by[name].argv
        assert by[name].config["start_lm"] == start.tag and by[name].config["model"]["init_from"] == f"{runs}/lm"
    rewrite = by["rewrite_then_retrieve/seed0"]
    assert f"--lm={runs}/lm" in rewrite.argv and "lm" in rewrite.deps and rewrite.config == {"lm": start.tag}
    # another pretraining stage config: another LM identity (its runs rerun); LaSER-only fields: the same LM
    other, _ = start_lm(f"{runs}/lm", False, config, runs, task, base,
                        ablate.load_config(config, {**base, "pretrain.num_steps": 9}))
    same, _ = start_lm(f"{runs}/lm", False, config, runs, task, base,
                       ablate.load_config(config, {**base, "laser.lambda_kl_mid": 0.5}))
    assert other.tag != start.tag and same.tag == start.tag


def test_latency_table_in_the_markdown(tmp_path):
    latency = {"basic": {"batch1": {"ms_per_query": 2.0, "ratio_to_basic": 1.0}},
               "rewrite_then_retrieve": {"batch1": {"ms_per_query": 50.0, "ratio_to_basic": 25.0}}}
    md = str(tmp_path / "a.md")
    report.write_markdown(md, {}, [0], "cmd", "machine", "budget", "timing", "dev", labels=ablate.LABELS,
                          latency=latency)
    text = open(md).read()
    assert "## Retrieval latency" in text and "| batch1 ms/query | batch1 x basic |" in text
    assert "| rewrite-then-retrieve (LM reasoning + explicit view) | 50.00 | 25.00 |" in text
    report.write_markdown(md, {}, [0], "cmd", "machine", "budget", "timing", "dev")
    assert "latency" not in open(md).read()


def test_a_job_marked_alone_runs_by_itself_with_every_thread(tmp_path):
    """B runs; A (alone) waits for it and C waits for A, though the three are independent;
    A gets XLA's own threading back, B and C one thread each."""
    script = ("import json, os, sys, time; t = time.time(); time.sleep(0.3); "
              "json.dump([t, time.time(), os.environ.get('XLA_FLAGS', '')], open(sys.argv[1], 'w'))")
    jobs = [jobs_lib.Job(name, name, 0, str(tmp_path / name), [sys.executable, "-c", script,
                                                                str(tmp_path / f"{name}.json")],
                         str(tmp_path / f"{name}.json"), alone=name == "A") for name in "BAC"]
    env = jobs_lib.child_env(2, str(tmp_path / "cache"))
    jobs_lib.run_jobs(jobs, 2, env, log=lambda _: None)
    assert [j.returncode for j in jobs] == [0, 0, 0]
    spans = {name: json.load(open(tmp_path / f"{name}.json")) for name in "BAC"}
    assert spans["B"][1] <= spans["A"][0] and spans["A"][1] <= spans["C"][0]
    assert jobs_lib.SINGLE_THREAD not in spans["A"][2]
    assert jobs_lib.SINGLE_THREAD in spans["B"][2] and jobs_lib.SINGLE_THREAD in spans["C"][2]
