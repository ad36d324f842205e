"""Damaged files (issue 27): what a run built itself is checked against its stage's manifest
and rebuilt from what is intact; what it did not build is refused in one line naming the file.

One finished main-command workdir (`configs/tiny.py:smoke`) is built per session, by a run
SIGKILLed while the task is generated and then run again (so it also shows that nothing of
the killed run is left behind). Each rerun test copies it, cuts files to half (as a crash
while copying or a full disk leaves them) and runs the same command again in this process:
it must end equal to the finished run (evaluation, metrics), with one warning naming each
damaged file. Every file of the workdir is damaged in turn for the cheap `--check` report;
the reruns take one class of files each (the files chosen from what is present).
"""
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from laser_jax import storage
from laser_jax.train import main as train_main_module
from laser_jax.train import run_files
from laser_jax.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "configs/tiny.py:smoke"
LOSS_KEYS = ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid")
STAGES = ("", "data", "lm", "lm/train")  # the stage directories of a finished main-command workdir


@contextlib.contextmanager
def collected_warnings():
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("laser_jax")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def train_cli(workdir, *extra):
    """`python -m laser_jax.train --config=configs/tiny.py:smoke --workdir=W` in this process:
    (exit code, warnings logged, stderr lines starting with "error:")."""
    argv = ["laser_jax.train", f"--config={SMOKE}", f"--workdir={workdir}", *extra]
    with pytest.MonkeyPatch.context() as mp, collected_warnings() as records:
        mp.chdir(ROOT)
        mp.setattr(sys, "argv", argv)
        code = train_main_module.main(argv)
    return code, [r.getMessage() for r in records]


def kill_while_the_task_is_generated(workdir) -> list:
    """Start the main command and SIGKILL it while its task generation's temporary directory
    exists; returns what it left in the workdir."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "laser_jax.train", f"--config={SMOKE}", f"--workdir={workdir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if os.path.isdir(workdir) and any(n.startswith(".synthetic-") for n in os.listdir(workdir)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait() == -signal.SIGKILL, "the run ended before its task was generated"
    return sorted(os.listdir(workdir))


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke") / "w"
    left = kill_while_the_task_is_generated(workdir)
    code, warnings = train_cli(workdir)
    assert code == 0, warnings
    return types.SimpleNamespace(path=workdir, left=left, warnings=warnings,
                                 eval=(workdir / "eval_results.json").read_bytes(),
                                 metrics=read_metrics(str(workdir)))


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def listed_files(workdir):
    """Every file the stages' manifests list, and the manifests themselves."""
    listed = set()
    for stage in STAGES:
        directory = os.path.join(workdir, stage)
        listed.add(os.path.join(stage, storage.MANIFEST))
        listed.update(os.path.join(stage, rel) for rel in storage.read_json(
            os.path.join(directory, storage.MANIFEST))["files"])
    return {os.path.normpath(p) for p in listed}


def cut(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def losses(rows):
    return np.array([[r[k] for k in LOSS_KEYS] for r in rows])


def test_a_run_killed_while_generating_the_task_leaves_nothing_behind(finished):
    w = str(finished.path)
    assert ".laser_jax.lock" in finished.left and any(n.startswith(".synthetic-") for n in finished.left)
    assert any(m.startswith(f"took over the stale lock of {w}") for m in finished.warnings), finished.warnings
    assert any(m.startswith(f"removed {w}/.synthetic-") for m in finished.warnings), finished.warnings
    assert set(all_files(w)) == listed_files(w)  # nothing but what the stages wrote
    assert all(storage.verify_manifest(os.path.join(w, s)).intact for s in STAGES)


def test_check_reports_every_damaged_file_without_touching_it(finished, tmp_path, capsys):
    w = str(tmp_path / "w")
    shutil.copytree(finished.path, w)
    for rel in all_files(w):
        path = os.path.join(w, rel)
        original = open(path, "rb").read()
        if not original:
            continue  # nothing to cut
        cut(path)
        notes = run_files.damage_notes(w, os.path.join(w, "lm"))
        assert len(notes) == 1 and notes[0].startswith(f"{path}: damaged ("), (rel, notes)
        open(path, "wb").write(original)
    cut(os.path.join(w, "lm", "model.safetensors"))
    before = {rel: open(os.path.join(w, rel), "rb").read() for rel in all_files(w)}
    capsys.readouterr()
    code, _ = train_cli(w, "--check")
    err = capsys.readouterr().err
    assert code == 0 and f"note: {w}/lm/model.safetensors: damaged (280532 bytes, 561064 were written: cut short?); " \
                          f"the run rebuilds it from the LM's checkpoints in {w}/lm/train" in err, err
    assert {rel: open(os.path.join(w, rel), "rb").read() for rel in all_files(w)} == before


def _largest(root, under):
    files = [os.path.join(under, f) for f in all_files(os.path.join(root, under))]
    return max(files, key=lambda f: os.path.getsize(os.path.join(root, f)))


def _newest_step(root, checkpoints):
    return os.path.join(checkpoints, max(os.listdir(os.path.join(root, checkpoints)), key=int))


# Each class of damaged files: which files (chosen from what the finished workdir holds).
CLASSES = {
    "task file": lambda w: [_largest(w, "data")],
    "LM weights": lambda w: ["lm/model.safetensors"],
    "LM stage record": lambda w: ["lm/stage.json"],
    "LM config": lambda w: ["lm/config.json"],
    "LM export, the other files": lambda w: [f"lm/{f}" for f in os.listdir(os.path.join(w, "lm")) if f not in (
        "model.safetensors", "stage.json", "config.json", "train", storage.MANIFEST)],
    "LM training run": lambda w: [_largest(w, _newest_step(w, "lm/train/checkpoints")), "lm/train/metrics.jsonl"],
    "last checkpoint": lambda w: [_largest(w, _newest_step(w, "checkpoints"))],
    "run tokenizer": lambda w: [f"tokenizer/{f}" for f in os.listdir(os.path.join(w, "tokenizer"))],
    "metrics": lambda w: ["metrics.jsonl"],
    "run outputs written again": lambda w: [f for f in all_files(w) if "/" not in f.replace("tensorboard/", "")
                                            and f not in ("metrics.jsonl", storage.MANIFEST)],
    "run manifest": lambda w: [storage.MANIFEST],
}


@pytest.mark.parametrize("damage", CLASSES)
def test_a_damaged_file_of_a_finished_workdir_is_rebuilt_on_rerun(finished, tmp_path, damage):
    w = str(tmp_path / "w")
    shutil.copytree(finished.path, w)
    damaged = CLASSES[damage](w)
    assert damaged
    reference = {f: open(os.path.join(w, f), "rb").read().replace(str(finished.path).encode(), w.encode())
                 for f in damaged}  # (run_config.json names the workdir)
    for f in damaged:
        cut(os.path.join(w, f))
    code, warnings = train_cli(w)
    assert code == 0, warnings
    for f in damaged:  # one warning naming each damaged file
        named = [m for m in warnings if m.startswith(f"{os.path.join(w, f)}: damaged (")]
        assert len(named) == 1, (f, warnings)
    assert open(os.path.join(w, "eval_results.json"), "rb").read() == finished.eval
    rows = read_metrics(w)
    if damage == "metrics":  # a log: the rows of its damaged line are lost, not recomputed
        assert [r["step"] for r in rows] == [r["step"] for r in finished.metrics][:len(rows)]
        np.testing.assert_array_equal(losses(rows), losses(finished.metrics[:len(rows)]))
    else:
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        np.testing.assert_allclose(losses(rows), losses(finished.metrics), rtol=1e-6)
    deterministic = [f for f in damaged if not f.startswith(("checkpoints/", "tensorboard/", "lm/train/"))
                     and f not in ("metrics.jsonl", "training_curves.png", storage.MANIFEST, "lm/lm_eval.json")]
    for f in deterministic:  # rebuilt as it was
        assert open(os.path.join(w, f), "rb").read() == reference[f], f
    for stage in STAGES:
        check = storage.verify_manifest(os.path.join(w, stage))
        assert check.intact or (stage == "lm/train" and damage == "LM training run"), (stage, check.damaged)
    assert not [f for f in all_files(w) if "/." in f or f.startswith(".") or ".tmp" in f]


@pytest.fixture(scope="session")
def hf_export(finished, tmp_path_factory):
    from laser_jax.inference import export_hf

    out = str(tmp_path_factory.mktemp("hf") / "model")
    assert export_hf.main(["export_hf", f"--model={finished.path}", f"--out={out}", "--dtype=float32"]) == 0
    return out


def one_error_line(err):
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("I1", "W1", "INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_export_and_evaluate_refuse_a_damaged_model_naming_the_file(finished, hf_export, tmp_path, capsys):
    from laser_jax.inference import evaluate, export

    w, hf = str(tmp_path / "w"), str(tmp_path / "hf")
    shutil.copytree(finished.path, w)
    shutil.copytree(hf_export, hf)
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "7 plus 3"}\n')
    read_by_a_load = [os.path.join(w, f) for f in all_files(w) if f.startswith(("tokenizer/", _newest_step(w, "checkpoints")))]
    targets = [(w, p) for p in read_by_a_load] + [(hf, os.path.join(hf, f)) for f in all_files(hf)]
    for i, (model, path) in enumerate(targets):
        original = open(path, "rb").read()
        cut(path)
        if i % 8:
            code = export.main(["export", f"--model={model}", f"--input={tmp_path}/in.jsonl",
                                f"--output={tmp_path}/out.npy", "--noprogress"])
        else:
            code = evaluate.main(["evaluate", f"--model={model}", f"--data={w}/data/eval", "--noprogress"])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and line.startswith(f"error: {path}: damaged ("), (path, line)
        open(path, "wb").write(original)
    assert not os.path.exists(tmp_path / "out.npy")


def test_a_damaged_export_output_is_exported_again(finished, tmp_path, caplog):
    from laser_jax.inference import export

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": str(i), "text": f"{i} plus 3"}) + "\n"
                                               for i in range(5)))
    out = str(tmp_path / "out.npy")
    argv = ["export", f"--model={finished.path}", f"--input={tmp_path}/in.jsonl", f"--output={out}", "--noprogress"]
    assert export.main(argv) == 0
    files = {f: open(tmp_path / f, "rb").read() for f in ("out.npy", "out.ids.txt", "out.export.json")}
    for name in files:
        cut(tmp_path / name)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert export.main(argv) == 0
        assert f"{tmp_path / name}: " in caplog.text and "exporting again" in caplog.text
        assert {f: open(tmp_path / f, "rb").read() for f in files} == files, name


def test_a_damaged_input_the_run_did_not_build_is_refused_in_one_line(finished, hf_export, tmp_path, capsys):
    from test_reliability import tiny_config

    tok = tmp_path / "tokenizer"
    shutil.copytree(finished.path / "tokenizer", tok)
    cut(tok / "tokenizer.json")
    task = {"tokenizer": str(tok), "train": str(finished.path / "data" / "train.jsonl")}
    code = train_main_module.check_main(tiny_config(task), None)
    assert code == 2 and one_error_line(capsys.readouterr().err) == (
        f"error: model.tokenizer: {tok}/tokenizer.json: not valid JSON (cut short at byte 13857?)")
    hf = tmp_path / "hf"
    shutil.copytree(hf_export, hf)
    cut(hf / "model.safetensors")
    config = tiny_config(task, **{"model.init_from": str(hf), "model.tokenizer": "", "model.preset": ""})
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim"):
        setattr(config.model, field, 0)
    code = train_main_module.check_main(config, None)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: model.init_from: {hf}/model.safetensors: damaged ("), line
    assert (hf / "model.safetensors").stat().st_size < os.path.getsize(os.path.join(hf_export, "model.safetensors"))
