"""Training: sharded == single device, step-1 losses == oracle, resume, accumulation, CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import jax

import laser_oracle as oracle
from conftest import small_run_config
from hf_models import build_hf_model
from laser_jax.data.synthetic import ensure_generated
from laser_jax.train import loop
from laser_jax.train.metrics import read_metrics
from laser_jax.train.config import validate
from laser_jax.train.trainer import set_up

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_KEYS = ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid")
LASER_JAX_FILES = {os.path.basename(f) for d, _, fs in os.walk(os.path.join(ROOT, "laser_jax")) for f in fs
                   if f.endswith(".py")}


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """A small generated task (train.jsonl + tokenizer), shared by the training tests."""
    return ensure_generated(str(tmp_path_factory.mktemp("task")), seed=0, n_train=256, n_eval_per_domain=8)


def small_config(task, **overrides):
    c = small_run_config(task, **overrides)
    validate(c)
    return c


def train(config, workdir):
    trained = loop.train(set_up(config, str(workdir)))
    return trained, read_metrics(str(workdir))


def losses(rows):
    return np.array([[r[k] for k in LOSS_KEYS] for r in rows])


def test_sharded_2x2x2_mesh_matches_one_device(task, tmp_path):
    lr = {"train.learning_rate": 1e-4}
    single_trainer, single = train(small_config(task, **lr), tmp_path / "one")
    mesh_cfg = small_config(task, **lr, **{"mesh.num_devices": 8, "mesh.shape": (2, 2, 2)})
    trainer, sharded = train(mesh_cfg, tmp_path / "eight")
    assert [r["step"] for r in sharded] == [1, 2, 3]
    np.testing.assert_allclose(losses(sharded), losses(single), rtol=1e-5)
    assert dict(trainer.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    params = trainer.state.trainable["params"]
    q = params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert params["embed_tokens"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert q.addressable_shards[0].data.shape == (2, 32 // 2, 32 // 2)
    mu = trainer.state.opt_state[1][0].mu["params"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert mu.sharding.spec == q.sharding.spec  # optimizer state follows its parameter


def test_splash_attention_on_a_2x2x2_mesh_trains_like_xla_on_one_device(task, tmp_path):
    """The TPU kernel (Pallas interpret mode here) inside the sharded, jitted train step."""
    lr = {"train.learning_rate": 1e-4, "train.num_steps": 2}
    _, single = train(small_config(task, **lr), tmp_path / "xla")
    splash_cfg = small_config(task, **lr, **{"mesh.num_devices": 8, "mesh.shape": (2, 2, 2),
                                             "model.attention_impl": "splash"})
    trainer, sharded = train(splash_cfg, tmp_path / "splash")
    assert trainer.model.cfg.attention_impl == "splash"
    # splash sums its online softmax block by block: float32 rounding differs slightly
    np.testing.assert_allclose(losses(sharded), losses(single), rtol=1e-4)


def oracle_inputs(records, tokenizer, group, K, q_max, d_max, e_max):
    """The spec's batch built by hand from the first records (no project data code)."""
    template = "Instruct: {instruction}\nQuery: {query}"

    def tok(texts, max_len):
        rows = [tokenizer(t)["input_ids"][:max_len] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        return ids, mask

    queries = [template.format(instruction=r["prompt"], query=r["query"]) for r in records]
    docs = [d for r in records for d in [r["positive_passages"][0]] + r["negative_passages"][:group - 1]]
    explicit = [q + (r["reasoning_query"] if len(r["reasoning_query"]) >= 5 else r["query"])
                for q, r in zip(queries, records)]
    q_ids, q_mask = tok(queries, q_max)
    d_ids, d_mask = tok(docs, d_max)
    e_ids, e_mask = tok(explicit, e_max)
    return {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask, "e_ids": e_ids,
            "e_mask": e_mask, "q_len": q_mask.sum(1)}


def test_step_one_losses_from_an_hf_checkpoint_equal_the_oracle(task, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(task["tokenizer"])
    model_dir = str(tmp_path / "hf")
    torch_model = build_hf_model("qwen3", model_dir, vocab_size=len(tokenizer), weight_std=0.08)
    config = small_config(task, **{"model.init_from": model_dir, "model.tokenizer": "", "model.vocab_size": 0,
                                   "model.hidden_size": 0, "model.intermediate_size": 0, "model.num_hidden_layers": 0,
                                   "model.num_attention_heads": 0, "model.num_key_value_heads": 0,
                                   "model.head_dim": 0, "train.num_steps": 1, "data.group_size": 3})
    tokenizer.save_pretrained(model_dir)
    _, rows = train(config, tmp_path / "run")
    records = [json.loads(line) for line in open(task["train"])][:8]
    batch = oracle_inputs(records, tokenizer, 3, 3, 64, 48, 128)
    split = {tokenizer.encode("\n\n", add_special_tokens=False)[-1]}
    with torch.no_grad():
        ref = oracle.laser_step(torch_model, batch, 3, split, tokenizer.eos_token_id)
    for i, key in enumerate(LOSS_KEYS):
        np.testing.assert_allclose(rows[0][key], float(ref[key]), rtol=2e-4, err_msg=key)


def test_resume_after_k_steps_logs_the_same_metrics(task, tmp_path):
    config = small_config(task, **{"train.num_steps": 4, "data.shuffle": True})
    _, straight = train(config, tmp_path / "straight")
    first = small_config(task, **{"train.num_steps": 4, "data.shuffle": True, "checkpoint.every_steps": 2})
    run = set_up(first, str(tmp_path / "resumed"))
    trained = loop.train(run, until=2)  # stop after 2 of the 4 scheduled steps, as an interrupted run would
    assert trained.checkpointer().latest_step() == 2
    resumed_trainer, resumed = train(first, tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)
    np.testing.assert_allclose([r["learning_rate"] for r in resumed], [r["learning_rate"] for r in straight])


def test_grain_iterator_resumes_at_the_same_record(task, tmp_path):
    config = small_config(task, **{"train.num_steps": 2, "data.shuffle": True})
    trainer, _ = train(config, tmp_path / "run")
    from laser_jax.data.pipeline import train_iterator

    expected = train_iterator(trainer.source, trainer.tokenizer, trainer.options)
    for _ in range(2):
        next(expected)
    fresh = train_iterator(trainer.source, trainer.tokenizer, trainer.options)
    restored = trainer.checkpointer().restore(trainer.abstract_state, fresh)
    assert restored[1] == 2
    np.testing.assert_array_equal(next(fresh)["record"], next(expected)["record"])


def test_gradient_accumulation_equals_one_large_step_without_in_batch_negatives(task, tmp_path):
    common = {"laser.in_batch_negatives": False, "train.num_steps": 2}
    _, one = train(small_config(task, **common), tmp_path / "one")
    _, two = train(small_config(task, **common, **{"train.grad_accum_steps": 2}), tmp_path / "two")
    # float32: accumulation sums the gradient in a different order, so step 2 starts from
    # parameters that differ by rounding; atol covers loss terms near zero (kl_out ~0.04).
    np.testing.assert_allclose(losses(two), losses(one), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose([r["l2_grads"] for r in two], [r["l2_grads"] for r in one], rtol=2e-5)


def run_cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "laser_jax.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_qwen3_0p6b_smoke_variant_trains_on_cpu(tmp_path):
    out = run_cli("--config=configs/qwen3_0p6b.py:smoke", f"--workdir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    # The output is laser_jax's own lines (and warnings): no library INFO lines (JAX's backend
    # probing, Orbax, grain).
    info = [line for line in out.stderr.splitlines() if line.startswith("I") and "]" in line]
    assert info and all(line.split("]")[0].rsplit(" ", 1)[-1].split(":")[0] in LASER_JAX_FILES for line in info), \
        out.stderr[-3000:]
    rows = read_metrics(str(tmp_path))
    assert len(rows) >= 2 and all(np.isfinite(r["loss"]) for r in rows)
    for key in ("step", "loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid",
                "learning_rate"):
        assert key in rows[-1]
    assert os.path.isdir(tmp_path / "checkpoints")


def test_unknown_or_invalid_config_fields_are_named_before_anything_runs(tmp_path):
    out = run_cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.batchsize=4")
    assert out.returncode != 0 and "batchsize" in out.stderr
    out = run_cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.laser.num_thinking_steps=0")
    assert out.returncode == 2 and "laser.num_thinking_steps" in out.stderr
    out = run_cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.train.batch_size=abc")
    assert out.returncode != 0 and "batch_size" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_model_section_run_time_options_reach_the_model_config(task):
    from laser_jax.train.setup import model_config

    c = small_config(task, **{"model.scan_layers": True, "model.unroll_soft_steps": True,
                              "model.remat_policy": "dots", "model.attention_impl": "xla_right_padded"})
    cfg = model_config(c, None)
    assert (cfg.scan_layers, cfg.unroll_soft_steps, cfg.remat_policy, cfg.attention_impl) == (
        True, True, "dots", "xla_right_padded")
    assert model_config(small_config(task), None).unroll_soft_steps is False
