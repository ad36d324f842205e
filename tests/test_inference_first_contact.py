"""Issue 17 ("First contact"), the inference side: what a user following the README hit.

A tiny training workdir is written directly (two checkpoint steps of a random HF model,
no training), so these tests load real Orbax checkpoints in seconds."""
import json
import logging
import os
import shutil
import types

import numpy as np
import orbax.checkpoint as ocp
import pytest

from hf_models import build_hf_model
from laser_jax import LaserEncoder
from laser_jax.data.formatting import TextFormat
from laser_jax.inference import export, export_hf, load
from laser_jax.inference import evaluate
from laser_jax.retrieval.bright import INSTRUCTIONS

TEXTS = ["What is 3 plus 4?", "The number 7 is the sum of two smaller numbers."]
ENC = dict(max_length=32, batch_size=2)
K = 2  # the workdir's own K (not the old evaluate default, 3)


def write_checkpoint(directory, step, loaded, num_thinking_steps=K):
    """WORKDIR/checkpoints/<step>/{state, meta} as training writes them (full fine-tuning)."""
    meta = load.make_meta(types.SimpleNamespace(to_json=lambda: "{}"), loaded.cfg, TextFormat(),
                          num_thinking_steps, eos_id=2)
    with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave({"trainable": {"params": loaded.variables["params"]}}),
            meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()


@pytest.fixture(scope="module")
def hf_dir(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def workdir(hf_dir, tokenizer, tmp_path_factory):
    """A workdir with checkpoints 1 and 2 (same weights), K=2, and its tokenizer."""
    path = tmp_path_factory.mktemp("run")
    loaded = load.load_hf_dir(hf_dir, "float32")
    for step in (1, 2):
        write_checkpoint(path / load.CHECKPOINTS, step, loaded)
    tokenizer.save_pretrained(str(path / load.TOKENIZER))
    return path


@pytest.fixture(scope="module")
def reference(hf_dir):
    return LaserEncoder.from_pretrained(hf_dir, dtype="float32", num_thinking_steps=K).encode(TEXTS, **ENC)


def corrupt(step_dir):
    """Truncate every file of the checkpoint's state item (as a crash of the disk might)."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            open(os.path.join(root, name), "w").close()


# ------------------------------------------------------------------ 1. relative model paths
def test_relative_workdir_path_loads_everywhere(workdir, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workdir.parent)
    rel = os.path.join(".", workdir.name)
    enc = LaserEncoder.from_pretrained(rel, dtype="float32")
    assert enc.num_thinking_steps == K
    np.testing.assert_allclose(enc.encode(TEXTS, **ENC), reference, atol=1e-5)
    # export and export_hf through their command lines, with relative paths throughout
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    shutil.copy(corpus, workdir.parent / "c.jsonl")
    rc = export.main(["export", f"--model={rel}", "--input=c.jsonl", "--output=out_rel/e.npy", "--kind=raw",
                      "--max_length=32", "--batch_size=2", "--noprogress"])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(workdir.parent / "out_rel" / "e.npy"), reference, atol=1e-5)
    rc = export_hf.main(["export_hf", f"--model={rel}", "--out=hf_rel", "--dtype=float32"])
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_allclose(LaserEncoder.from_pretrained("hf_rel", dtype="float32").encode(TEXTS, **ENC),
                               reference, atol=1e-5)


def test_relative_step_directory_path(workdir, reference, monkeypatch):
    monkeypatch.chdir(workdir)
    enc = LaserEncoder.from_pretrained(os.path.join(load.CHECKPOINTS, "1"), dtype="float32")
    np.testing.assert_allclose(enc.encode(TEXTS, **ENC), reference, atol=1e-5)


# ------------------------------------------------------------ 2. evaluate uses the model's K
def bright_dir(root):
    from test_evaluate import random_domain, write_domain

    write_domain(str(root), "pony", *random_domain(np.random.default_rng(0), 12, 3))
    return str(root)


def test_evaluate_defaults_to_the_models_own_K_and_says_which(workdir, tmp_path, capsys):
    data = bright_dir(tmp_path / "data")
    out = tmp_path / "r.json"
    rc = evaluate.main(["evaluate", f"--model={workdir}", f"--data={data}", "--max_length=32",
                        "--batch_size=4", f"--output={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "num_thinking_steps K=2" in printed
    default = json.loads(out.read_text())
    assert default["num_thinking_steps"] == K
    rc = evaluate.main(["evaluate", f"--model={workdir}", f"--data={data}", "--max_length=32",
                        "--batch_size=4", f"--output={out}", "--num_thinking_steps=1"])
    assert rc == 0 and "num_thinking_steps K=1" in capsys.readouterr().out
    explicit = json.loads(out.read_text())
    assert explicit["num_thinking_steps"] == 1
    assert explicit["domains"] != default["domains"]  # K=1 is another model


# ----------------------------------------------------------------- 3. an invalid K is an error
@pytest.mark.parametrize("k", [0, -1])
def test_invalid_K_on_every_command_line_exits_2_naming_the_flag_before_loading(k, workdir, tmp_path,
                                                                                  monkeypatch, capsys):
    from laser_jax.inference import encoder as encoder_module

    def no_load(*_, **__):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(encoder_module, "load_for_inference", no_load)
    monkeypatch.setattr(load, "load_for_inference", no_load)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    data = bright_dir(tmp_path / "data")
    for main, args in ((export.main, [f"--input={corpus}", f"--output={tmp_path}/e.npy"]),
                       (export_hf.main, [f"--out={tmp_path}/hf"]),
                       (evaluate.main, [f"--data={data}"])):
        rc = main(["cmd", f"--model={workdir}", f"--num_thinking_steps={k}", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: --num_thinking_steps={k}: "), err


@pytest.mark.parametrize("k", [0, -1])
def test_invalid_K_in_every_python_api(k, hf_dir, tmp_path):
    from laser_jax.inference.mteb import LaserMtebEncoder

    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        LaserEncoder.from_pretrained(hf_dir, num_thinking_steps=k)
    enc = LaserEncoder.from_pretrained(hf_dir, dtype="float32")
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        enc.encode(TEXTS, num_thinking_steps=k, **ENC)
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        LaserEncoder(enc.cfg, enc.variables, enc.tokenizer, num_thinking_steps=k)
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        LaserMtebEncoder(encoder=enc, num_thinking_steps=k)
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        export.ExportSettings(num_thinking_steps=k).check()
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        export_hf.export_hf(hf_dir, str(tmp_path / "hf"), num_thinking_steps=k)
    assert not os.path.exists(tmp_path / "hf")


# ------------------------------------------------ 4. padding follows the texts, not max_length
def test_short_texts_are_padded_to_their_own_width_at_the_default_max_length(hf_dir, reference):
    from laser_jax.inference.evaluate import FLAGS as EVAL_FLAGS
    from laser_jax.inference.mteb import LaserMtebEncoder

    enc = LaserEncoder.from_pretrained(hf_dir, dtype="float32", num_thinking_steps=K)
    long_max = EVAL_FLAGS["max_length"].default
    assert long_max == 8192 and LaserMtebEncoder(encoder=enc).max_length == 8192
    got = enc.encode(TEXTS, max_length=long_max, batch_size=2)
    assert enc.compiled_widths == (16,)  # both texts are <= 16 tokens
    np.testing.assert_allclose(got, reference, atol=1e-5)
    enc.encode([" ".join(["number"] * 100)], max_length=long_max, batch_size=2)
    assert enc.compiled_widths == (16, 128)


# ------------------------------------- 7. a damaged newest checkpoint falls back, as training does
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(workdir, reference, tmp_path, caplog, capsys):
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    corrupt(run / load.CHECKPOINTS / "2")
    with caplog.at_level(logging.WARNING, logger="laser_jax"):
        enc = LaserEncoder.from_pretrained(str(run), dtype="float32")
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint step 2 in {run}/checkpoints could not be loaded" in warned
    assert "loaded checkpoint step 1" in warned
    np.testing.assert_allclose(enc.encode(TEXTS, **ENC), reference, atol=1e-5)
    caplog.clear()
    data = bright_dir(tmp_path / "data")
    rc = evaluate.main(["evaluate", f"--model={run}", f"--data={data}", "--max_length=32", "--batch_size=4"])
    assert rc == 0 and "could not be loaded" in caplog.text
    rc = export_hf.main(["export_hf", f"--model={run}", f"--out={tmp_path}/hf", "--dtype=float32"])
    assert rc == 0
    # None restores: one line naming the directory, exit 2; nothing is moved or deleted.
    corrupt(run / load.CHECKPOINTS / "1")
    capsys.readouterr()
    rc = export_hf.main(["export_hf", f"--model={run}", f"--out={tmp_path}/hf2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {run}/checkpoints: no checkpoint could be loaded (step 2: "), err
    assert sorted(os.listdir(run / load.CHECKPOINTS)) == ["1", "2"]
    with pytest.raises(load.CheckpointLoadError, match="step 1: "):
        LaserEncoder.from_pretrained(str(run))


# ------------------------------------------------------- 9. sizes are checked by their own names
@pytest.mark.parametrize("flag", ["--batch_size=0", "--max_length=0", "--chunk_size=0", "--batch_size=-3",
                                  "--num_shards=0"])
def test_export_sizes_are_checked_by_their_own_flag_names(flag, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    rc = export.main(["export", "--model=/no/such/model", f"--input={corpus}", f"--output={tmp_path}/e.npy", flag])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {flag} must be an integer >= 1\n", err


@pytest.mark.parametrize("flag", ["--batch_size=0", "--max_length=-1", "--block_size=0"])
def test_evaluate_sizes_are_checked_by_their_own_flag_names(flag, tmp_path, capsys):
    rc = evaluate.main(["evaluate", "--model=/no/such/model", f"--data={tmp_path}", flag])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {flag} must be an integer >= 1\n", err


# ------------------------------------------------------ 8. export_hf onto a full disk: exit 4, no leftovers
class SafetensorError(Exception):
    """Stands in for safetensors' error type (what a real full disk raises)."""


def test_export_hf_on_a_full_disk_exits_4_and_leaves_nothing(hf_dir, tmp_path, monkeypatch, capsys):
    from laser_jax.model import hf_io

    def full_disk_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # a partial shard, as a real full disk leaves
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    out = tmp_path / "exports" / "hf"
    good = tmp_path / "exports" / "good"
    assert export_hf.main(["export_hf", f"--model={hf_dir}", f"--out={good}", "--dtype=float32"]) == 0
    before = {n: (good / n).read_bytes() for n in os.listdir(good)}
    monkeypatch.setattr(hf_io, "save_file", full_disk_save)
    capsys.readouterr()
    rc = export_hf.main(["export_hf", f"--model={hf_dir}", f"--out={out}"])
    err = capsys.readouterr().err
    assert rc == 4 and err.count("\n") == 1, err
    assert err.startswith(f"error: disk full: could not write the Hugging Face export to {out} "
                          "(no space left on device)"), err
    assert sorted(os.listdir(tmp_path / "exports")) == ["good"]  # no partial directory
    # --overwrite onto an existing export: the old one stays whole
    rc = export_hf.main(["export_hf", f"--model={hf_dir}", f"--out={good}", "--overwrite"])
    assert rc == 4 and sorted(os.listdir(tmp_path / "exports")) == ["good"]
    assert {n: (good / n).read_bytes() for n in os.listdir(good)} == before
    with pytest.raises(export_hf.DiskFullError) as e:
        export_hf.export_hf(hf_dir, str(out))
    assert e.value.errno == 28 and not out.exists()


def test_export_hf_overwrite_replaces_the_model_files(hf_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00002.safetensors").write_text("stale shard")
    export_hf.export_hf(hf_dir, str(out), dtype="float32", num_thinking_steps=1, overwrite=True)
    names = sorted(os.listdir(out))
    assert "notes.txt" in names and "model.safetensors" in names
    assert "model-00001-of-00002.safetensors" not in names
    assert json.loads((out / "laser.json").read_text())["num_thinking_steps"] == 1
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    LaserEncoder.from_pretrained(str(out), dtype="float32").encode(TEXTS, **ENC)


# --------------------------------------------------------------------------- 10. progress bars
def test_encode_progress_bar_is_opt_in_and_on_stderr(hf_dir, capsys):
    enc = LaserEncoder.from_pretrained(hf_dir, dtype="float32")
    capsys.readouterr()  # the one line naming a foreign directory's text format
    enc.encode(TEXTS, **ENC)
    assert capsys.readouterr().err == ""
    enc.encode(TEXTS, show_progress_bar=True, **ENC)
    captured = capsys.readouterr()
    assert "2/2" in captured.err and captured.out == ""


def test_evaluate_shows_progress_over_the_corpus(workdir, tmp_path, capsys):
    data = bright_dir(tmp_path / "data")
    assert evaluate.main(["evaluate", f"--model={workdir}", f"--data={data}", "--max_length=32"]) == 0
    err = capsys.readouterr().err
    assert "documents" in err and "12/12" in err
    assert evaluate.main(["evaluate", f"--model={workdir}", f"--data={data}", "--max_length=32",
                          "--noprogress"]) == 0
    assert "12/12" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ 11. log noise
NOISE = ("PyTorch was not found", "Unable to initialize backend", "orbax", "Restoring checkpoint",
         "Created BasePyTreeCheckpointHandler", "throughput")


def test_inference_commands_print_no_library_noise_but_keep_warnings(workdir, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    corrupt(run / load.CHECKPOINTS / "2")
    data = bright_dir(tmp_path / "data")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # As a user without torch, with Python logging at INFO (where jax reports its TPU probe).
    driver = ("import logging, sys; logging.basicConfig(level=logging.INFO); sys.modules['torch'] = None; "
              "from laser_jax.evaluate import main; sys.exit(main(sys.argv))")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", driver, f"--model={run}", f"--data={data}", "--max_length=32",
                           "--noprogress"], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)], proc.stderr
    assert "checkpoint step 2 in" in proc.stderr and "could not be loaded" in proc.stderr
    assert "pony" in proc.stdout
