"""The two-stage default (train/stages.py): LM pretraining, then LaSER from the LM."""
import json
import os

import pytest

from laser_jax.data.errors import ConfigError
from laser_jax.experiments.ablate import load_config
from laser_jax.train import main as train_main_module
from laser_jax.train import stages
from laser_jax.train.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _task_paths(root):
    return {"train": f"{root}/train.jsonl", "tokenizer": f"{root}/tokenizer", "corpus": f"{root}/corpus.jsonl",
            "lm_corpus": f"{root}/lm_corpus.jsonl"}


def test_stage_config_and_fingerprint():
    c = load_config(os.path.join(ROOT, "configs/tiny.py"))
    assert stages.wants_pretraining(c)
    s = stages.stage_config(c, _task_paths("/a"))
    assert s.train.objective == "causal_lm" and s.train.learning_rate == 3e-3
    assert (s.train.num_steps, s.train.batch_size) == (c.pretrain.num_steps, c.pretrain.batch_size)
    assert s.data.lm_pack_len == c.data.lm_pack_len > 0  # packed LM rows
    assert s.train.schedule == "cosine" and s.train.warmup_steps == 100 and s.train.adam_b2 == 0.99
    assert s.model.init_from == "" and s.lora.rank == 0 and s.model.hidden_size == c.model.hidden_size
    assert s.data.lm_corpus == "/a/lm_corpus.jsonl" and not s.data.synthetic  # the task's LM texts
    fp = stages.fingerprint(s, "/no/task")
    assert fp == stages.fingerprint(stages.stage_config(c, _task_paths("/b")), "/no/task")  # paths do not count
    c2 = load_config(os.path.join(ROOT, "configs/tiny.py"), {"pretrain.learning_rate": 1e-3})
    assert fp != stages.fingerprint(stages.stage_config(c2, _task_paths("/a")), "/no/task")
    for fine_tune_only in ({"train.learning_rate": 5e-4}, {"laser.num_thinking_steps": 5},
                           {"data.group_size": 3}, {"train.log_every": 7}, {"checkpoint.every_steps": 9}):
        c3 = load_config(os.path.join(ROOT, "configs/tiny.py"), fine_tune_only)
        assert fp == stages.fingerprint(stages.stage_config(c3, _task_paths("/a")), "/no/task"), fine_tune_only
    for lm_setting in ({"model.hidden_size": 32}, {"data.explicit_max_len": 90}, {"pretrain.seed": 1},
                       {"data.lm_pack_len": 96}):
        c4 = load_config(os.path.join(ROOT, "configs/tiny.py"), lm_setting)
        assert fp != stages.fingerprint(stages.stage_config(c4, _task_paths("/a")), "/no/task"), lm_setting
    for off in ({"model.init_from": "/x"}, {"data.synthetic": False}, {"pretrain.num_steps": 0}):
        assert not stages.wants_pretraining(load_config(os.path.join(ROOT, "configs/tiny.py"), off))
    assert not stages.wants_pretraining(base_config())


def test_a_foreign_directory_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="pretrain.dir"):
        stages._prepare_dir(str(tmp_path), {"x": 1})
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_two_stage_smoke_and_rerun_reuses_the_lm(tmp_path):
    config = load_config(os.path.join(ROOT, "configs/tiny.py") + ":smoke")
    workdir = str(tmp_path / "run")
    calls = []

    def train_main(c, w):
        calls.append((c.train.objective, w))
        return train_main_module.train_main(c, w)

    assert stages.run(config, workdir, train_main) == 0
    lm = os.path.join(workdir, "lm")
    assert calls == [("causal_lm", os.path.join(lm, "train")), ("laser", workdir)]
    hf = json.load(open(os.path.join(lm, "config.json")))
    assert hf["hidden_size"] == 64 and hf["vocab_size"] == 640 and hf["eos_token_id"] is not None
    assert hf["pad_token_id"] is not None and hf.get("torch_dtype", "float32") == "float32"
    assert os.path.exists(os.path.join(lm, "tokenizer.json"))
    # the LM carries the format it was trained with: loading it is never a foreign model's guess
    assert json.load(open(os.path.join(lm, "laser.json")))["chat_template"] is config.data.chat_template
    lm_metrics = [json.loads(line) for line in open(os.path.join(lm, "train", "metrics.jsonl"))]
    assert [r["step"] for r in lm_metrics] == [1, 2, 3] and all("acc" in r for r in lm_metrics)
    result = json.load(open(os.path.join(lm, "lm_eval.json")))
    assert result["n"] == 300 and set(result["per_domain"]) == {"steps2", "steps3", "steps4"}
    run_config = json.load(open(os.path.join(workdir, "run_config.json")))
    assert run_config["model"]["init_from"] == lm and run_config["train"]["objective"] == "laser"
    weights = os.path.join(lm, "model.safetensors")
    mtime = os.path.getmtime(weights)

    calls.clear()
    assert stages.run(config, workdir, train_main) == 0  # the rerun: the LM is reused
    assert calls == [("laser", workdir)]
    assert os.path.getmtime(weights) == mtime


def test_init_from_accepts_architecture_fields_equal_to_its_config(tmp_path, tokenizer):
    import jax

    from laser_jax.model.config import preset
    from laser_jax.model.decoder import init_variables
    from laser_jax.model.hf_io import save_pretrained
    from laser_jax.train import setup

    arch = dict(vocab_size=448, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8)
    cfg = preset("tiny_qwen3", **arch, param_dtype="float32", compute_dtype="float32",
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    save_pretrained(str(tmp_path), init_variables(cfg, jax.random.key(0))["params"], cfg, tokenizer, dtype="float32")
    c = base_config()
    c.model.init_from = str(tmp_path)
    for k, v in arch.items():
        setattr(c.model, k, v)
    got = setup.model_config(c, tokenizer)  # every field restates the directory's value: accepted
    assert (got.hidden_size, got.vocab_size) == (32, 448)
    c.model.hidden_size = 64
    with pytest.raises(ConfigError, match=r"model.hidden_size: 64 conflicts .*\(hidden_size=32 in its config.json\)"):
        setup.model_config(c, tokenizer)
