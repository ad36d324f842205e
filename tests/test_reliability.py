"""Reliability (docs/faults.md), part 1: bad data, bad configs and bad model directories
end the run before any training with one "error: ..." naming the file, line and field (exit
code 2); skipped bad records are counted and located.

Also holds the helpers the other test_reliability_* files import: the shared generated
task, a tiny config, and `run_main` (the CLI's body, in-process).
"""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import small_run_config
from laser_jax.inference import evaluate
from laser_jax.inference import export
from laser_jax.train import faults
from laser_jax.data.synthetic import ensure_generated
from laser_jax.train.config import validate
from laser_jax.train.main import train_main
from laser_jax.train.trainer import set_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TASK = {}


@pytest.fixture(scope="session")
def rtask(tmp_path_factory):
    """A small generated task (train.jsonl, eval dir, tokenizer), generated once per session
    for every test_reliability_* module."""
    if "paths" not in _TASK:
        _TASK["paths"] = ensure_generated(str(tmp_path_factory.mktemp("rtask")), seed=0, n_train=96,
                                          n_eval_per_domain=4)
    return _TASK["paths"]


def tiny_config(task, **overrides):
    """The training tests' small config (conftest.small_run_config): 4 steps of 8 queries,
    checkpoints every 2 steps."""
    return small_run_config(task, **{"train.num_steps": 4, "checkpoint.every_steps": 2, **overrides})


def run_main(config, workdir, capsys):
    """The CLI's body in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = train_main(config, str(workdir))
    return code, capsys.readouterr().err


def good_records(task, n):
    with open(task["train"]) as f:
        return [json.loads(next(f)) for _ in range(n)]


def write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else
                    ((line if isinstance(line, str) else json.dumps(line)) + "\n").encode())
    return str(path)


# ----------------------------------------------------------------------------- data
def _bad(record, **changes):
    out = dict(record)
    for k, v in changes.items():
        if v is _DROP:
            out.pop(k)
        else:
            out[k] = v
    return out


_DROP = object()
BAD_RECORDS = [  # (id, line 2 of the file, expected text after "train.jsonl: line 2: ")
    ("malformed_json", lambda r: '{"query": "x", "prompt": ', "malformed JSON"),
    ("not_an_object", lambda r: "[1, 2]", "expected a JSON object, got list"),
    ("missing_query", lambda r: _bad(r, query=_DROP), "field 'query': missing"),
    ("query_not_str", lambda r: _bad(r, query=7), "field 'query': expected a string, got int"),
    ("empty_query", lambda r: _bad(r, query="   "), "field 'query': is empty"),
    ("missing_positives", lambda r: _bad(r, positive_passages=_DROP), "field 'positive_passages': missing"),
    ("positives_not_list", lambda r: _bad(r, positive_passages="a doc"),
     "field 'positive_passages': expected a list, got str"),
    ("no_positives", lambda r: _bad(r, positive_passages=[]), "field 'positive_passages': no positive passage"),
    ("missing_negatives", lambda r: _bad(r, negative_passages=_DROP), "field 'negative_passages': missing"),
    ("negative_not_text", lambda r: _bad(r, negative_passages=[3]), "field 'negative_passages[0]': expected a "
                                                                     "string or an object with 'text', got int"),
    ("no_negatives_group_2", lambda r: _bad(r, negative_passages=[]),
     "field 'negative_passages': no negative passage, but group_size=2 needs 1 per query"),
    ("not_utf8", lambda r: b'{"query": "caf\xe9"}\n', "not valid UTF-8: byte 0xe9"),
]


@pytest.mark.parametrize("make,expected", [b[1:] for b in BAD_RECORDS], ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_exits_2_naming_file_line_field_before_training(rtask, tmp_path, capsys, make, expected):
    good = good_records(rtask, 3)
    path = write_lines(tmp_path / "train.jsonl", [good[0], make(good[1]), good[2]])
    code, err = run_main(tiny_config(rtask, **{"data.train_files": path}), tmp_path / "run", capsys)
    assert code == faults.EXIT_BAD_INPUT
    assert err.startswith("error: 1 problem(s) in the training data")
    assert f"{path}: line 2: {expected}" in err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("name,expected", [
    ("missing.jsonl", "no such file"),
    ("train-*.jsonl", "glob pattern matched no files"),
    ("empty.jsonl", "file is empty (no records)"),
])
def test_missing_empty_or_unmatched_files_exit_2(rtask, tmp_path, capsys, name, expected):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    path = str(tmp_path / name)
    code, err = run_main(tiny_config(rtask, **{"data.train_files": path}), tmp_path / "run", capsys)
    assert code == faults.EXIT_BAD_INPUT and f"{path}: {expected}" in err and "Traceback" not in err


def test_skip_bad_records_counts_and_locates_them(rtask, tmp_path, caplog):
    good = good_records(rtask, 16)
    lines = good[:3] + ["{broken"] + good[3:9] + [_bad(good[9], query="")] + good[9:]
    path = write_lines(tmp_path / "train.jsonl", lines)
    config = tiny_config(rtask, **{"data.train_files": path, "data.skip_bad_records": True})
    with caplog.at_level(logging.WARNING, logger="laser_jax"):
        trainer = set_up(config, str(tmp_path / "run"))
    report = "\n".join(r.getMessage() for r in caplog.records)
    assert "loaded 16 of 18 records" in report
    assert f"skipped 2 bad record(s): {path}: line 4, {path}: line 11" in report
    assert f"{path}: line 4: malformed JSON" in report
    assert f"{path}: line 11: field 'query': is empty" in report
    assert len(trainer.source) == 16 and trainer.source.location(3) == f"{path}: line 5"


def test_cli_bad_data_prints_one_error_line_and_exits_2(rtask, tmp_path):
    """The real entry point: no traceback, exit code 2, before any step or checkpoint."""
    good = good_records(rtask, 2)
    path = write_lines(tmp_path / "train.jsonl", [good[0], _bad(good[1], positive_passages=[])])
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "laser_jax.train", "--config=configs/tiny.py",
                          f"--workdir={tmp_path / 'run'}", f"--config.data.train_files={path}",
                          f"--config.model.tokenizer={rtask['tokenizer']}", "--config.data.synthetic=False",
                          "--config.mesh.num_devices=1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert f"{path}: line 2: field 'positive_passages': no positive passage" in out.stderr
    assert "step 1/" not in out.stderr and not os.path.exists(tmp_path / "run" / "checkpoints")


def test_bad_eval_dir_is_reported_before_training(rtask, tmp_path, capsys):
    eval_dir = tmp_path / "eval"
    shutil.copytree(rtask["eval"], eval_dir)
    domain = sorted(p for p in os.listdir(eval_dir) if os.path.isdir(eval_dir / p))[0]
    queries = eval_dir / domain / "queries.jsonl"
    rows = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]
    rows[1]["gold_ids"] = ["no-such-doc"]
    write_lines(queries, rows)
    code, err = run_main(tiny_config(rtask, **{"data.eval_dir": str(eval_dir)}), tmp_path / "run", capsys)
    assert code == 2 and "data.eval_dir:" in err and f"{queries}:2" in err and "no-such-doc" in err


# ----------------------------------------------------------------------------- model directories
def _hf_config_json(path):
    cfg = dict(model_type="qwen3", vocab_size=768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=0)
    (path / "config.json").write_text(json.dumps(cfg))


def _hf_dir(tmp_path, rtask, config=True, tokenizer=True):
    d = tmp_path / "hf"
    d.mkdir()
    if config:
        _hf_config_json(d)
    if tokenizer:
        for name in os.listdir(rtask["tokenizer"]):
            shutil.copy(os.path.join(rtask["tokenizer"], name), d / name)
    return d


ARCH_ZERO = {f"model.{f}": 0 for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "num_key_value_heads", "head_dim")}


@pytest.mark.parametrize("config,tokenizer,expected", [
    (False, True, "no config.json"),
    (True, False, "no tokenizer files"),
    (True, True, "no model.safetensors"),
])
def test_init_from_an_incomplete_hf_dir_exits_2_naming_the_field(rtask, tmp_path, capsys, config, tokenizer,
                                                                 expected):
    d = _hf_dir(tmp_path, rtask, config, tokenizer)
    overrides = {"model.init_from": str(d), "model.tokenizer": "", **ARCH_ZERO}
    code, err = run_main(tiny_config(rtask, **overrides), tmp_path / "run", capsys)
    assert code == 2 and err.startswith(f"error: model.init_from: {d}") and expected in err, err


def test_evaluate_cli_with_an_incomplete_hf_dir_fails_with_a_message(rtask, tmp_path, capsys):
    from laser_jax.inference.encoder import LaserEncoder

    no_config = _hf_dir(tmp_path, rtask, config=False)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LaserEncoder.from_pretrained(str(no_config))
    shutil.rmtree(no_config)
    no_tokenizer = _hf_dir(tmp_path, rtask, tokenizer=False)
    assert evaluate.main(["evaluate", f"--model={no_tokenizer}", f"--data={rtask['eval']}"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{no_tokenizer}: no tokenizer files" in err


# ----------------------------------------------------------------------------- export / evaluation inputs
def test_export_cli_rejects_duplicate_ids_naming_line_and_field(tmp_path, capsys):
    path = write_lines(tmp_path / "docs.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"},
                                                 {"id": "a", "text": "z"}])
    assert export.main(["export", "--model=/nonexistent", f"--input={path}", f"--output={tmp_path / 'o.npy'}",
                        "--noprogress"]) != 0
    err = capsys.readouterr().err
    assert f"error: {path}:3: field 'id': duplicate id 'a' (first on line 1)" in err
    assert not os.path.exists(tmp_path / "o.npy")


@pytest.mark.parametrize("queries,docs,expected", [
    ([{"id": "q1", "query": "x", "gold_ids": ["d1", "d9"]}], [{"id": "d1", "content": "a"}],
     "queries.jsonl:1: field 'gold_ids': gold id 'd9' names no document"),
    ([{"id": "q1", "query": "x", "gold_ids": ["d1"]}],
     [{"id": "d1", "content": "a"}, {"id": "d1", "content": "b"}],
     "documents.jsonl:2: field 'id': duplicate document id 'd1' (first on line 1)"),
])
def test_evaluate_cli_rejects_bad_qrels_and_duplicate_ids(tmp_path, capsys, queries, docs, expected):
    domain = tmp_path / "biology"
    domain.mkdir()
    write_lines(domain / "queries.jsonl", queries)
    write_lines(domain / "documents.jsonl", docs)
    np.save(tmp_path / "q.npy", np.ones((1, 4), np.float32))
    np.save(tmp_path / "d.npy", np.ones((len(docs), 4), np.float32))
    code = evaluate.main(["evaluate", f"--data={domain}", f"--query_embeddings={tmp_path / 'q.npy'}",
                          f"--document_embeddings={tmp_path / 'd.npy'}"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and expected in err


# ----------------------------------------------------------------------------- configs
BAD_CONFIGS = [
    ({"laser.num_thinking_steps": 0}, "laser.num_thinking_steps: must be >= 1"),
    ({"train.batch_size": 0}, "train.batch_size: must be >= 1"),
    ({"data.query_max_len": 0}, "data.query_max_len: must be >= 1"),
    ({"data.doc_max_len": -4}, "data.doc_max_len: must be >= 1"),
    ({"data.group_size": 0}, "data.group_size: must be >= 1"),
    ({"model.preset": "qwen9_huge"}, "model.preset: unknown preset 'qwen9_huge'"),
    ({"lora.rank": 4, "lora.targets": "q_proj,attn_out"}, "lora.targets: ['attn_out'] match no projection"),
    ({"lora.rank": 4, "lora.targets": " , "}, "lora.targets: [] match no projection"),
    ({"data.explicit_max_len": 32}, "data.explicit_max_len: 32 is shorter than data.query_max_len=64"),
    ({"mesh.shape": (2, 2)}, "mesh.shape: (2, 2) must be (data, fsdp, tensor)"),
    ({"train.nonfinite": "ignore"}, "train.nonfinite: 'ignore' must be stop or skip"),
    ({"eval.batch_size": 0}, "eval.batch_size: must be >= 1"),
    ({"data.bucket_fractions": (0.5, 1.5)}, "data.bucket_fractions: (0.5, 1.5): each fraction must be in (0, 1]"),
    ({"model.attention_impl": "flash"}, "model.attention_impl: 'flash' is not one of"),
]


@pytest.mark.parametrize("overrides,expected", BAD_CONFIGS, ids=[e.split(":")[0] for _, e in BAD_CONFIGS])
def test_invalid_config_field_exits_2_naming_it(rtask, tmp_path, capsys, overrides, expected):
    code, err = run_main(tiny_config(rtask, **overrides), tmp_path / "run", capsys)
    assert code == faults.EXIT_BAD_INPUT and expected in err, err
    assert err.startswith("error: invalid config:") and not os.path.exists(tmp_path / "run")


def test_attention_impl_auto_picks_cudnn_only_on_a_gpu_in_half_precision():
    from laser_jax.model.config import resolve_attention_impl

    assert resolve_attention_impl("auto", "bfloat16", "gpu") == "cudnn"
    assert resolve_attention_impl("auto", "float16", "gpu") == "cudnn"
    assert resolve_attention_impl("auto", "float32", "gpu") is None  # cuDNN flash needs half precision
    assert resolve_attention_impl("auto", "bfloat16", "tpu") == "splash"
    assert resolve_attention_impl("auto", "bfloat16", "cpu") is None
    assert resolve_attention_impl("", "bfloat16", "gpu") is None
    assert resolve_attention_impl("xla_right_padded", "float32", "cpu") == "xla_right_padded"


def test_validate_lists_every_invalid_field_at_once(rtask):
    with pytest.raises(ValueError) as e:
        validate(tiny_config(rtask, **{"train.batch_size": 0, "laser.num_thinking_steps": 0, "data.prefetch": -1}))
    for field in ("train.batch_size", "laser.num_thinking_steps", "data.prefetch"):
        assert field in str(e.value)


@pytest.mark.parametrize("overrides,expected", [
    ({"mesh.shape": (2, 1, 1)}, "mesh.shape: (2, 1, 1) needs 2 devices, but 1 are available"),
    ({"mesh.num_devices": 64, "mesh.shape": (-1, 1, 1)}, "mesh.num_devices: 64 requested, 8 available"),
    ({"mesh.num_devices": 3, "mesh.shape": (-1, 1, 1)},
     "train.batch_size: 8 queries in 1 micro-batch(es) of 8 do not split over the 3 data-parallel devices"),
    ({"mesh.num_devices": 8, "mesh.shape": (3, -1, 1)}, "mesh.shape: (3, -1, 1) does not divide the 8 devices"),
])
def test_mesh_that_does_not_fit_the_devices_exits_2_at_set_up(rtask, tmp_path, capsys, overrides, expected):
    code, err = run_main(tiny_config(rtask, **overrides), tmp_path / "run", capsys)
    assert code == faults.EXIT_BAD_INPUT and expected in err, err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
