"""A trained LoRA checkpoint serves inference: LaserEncoder, HF export + PyTorch oracle,
and the frozen-teacher ("no co-learning") mode."""
import numpy as np
import pytest
import torch

import jax

import laser_oracle as oracle
from laser_jax import LaserEncoder
from laser_jax.inference.export_hf import export_hf
from laser_jax.train.final_eval import encoder_from_trainer
from test_train import small_config, task, train  # noqa: F401  (task is a fixture)

TEXTS = ["Take 3. Add 4, then double it.", "The number 14 is even.", "7 plus 2 is 9\n\n9 doubled is 18"]


@pytest.fixture(scope="module")
def lora_run(task, tmp_path_factory):  # noqa: F811
    workdir = tmp_path_factory.mktemp("lora_run")
    config = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "train.num_steps": 2,
                                   "train.learning_rate": 5e-2})
    trainer, _ = train(config, workdir)
    return trainer, str(workdir)


def test_encoder_from_workdir_equals_the_trained_state(lora_run):
    trainer, workdir = lora_run
    assert float(jax.tree_util.tree_reduce(lambda a, x: a + float(np.abs(x).sum()),
                                           trainer.state.trainable["lora"]["layers"]["mlp"]["lora_gate_up"]["b"], 0.0)) > 0
    in_memory = encoder_from_trainer(trainer).encode(TEXTS)
    from_disk = LaserEncoder.from_pretrained(workdir, dtype="float32")
    assert from_disk.num_thinking_steps == 3 and "lora" in from_disk.variables
    np.testing.assert_allclose(from_disk.encode(TEXTS), in_memory, atol=1e-5)


def test_hf_export_of_a_lora_checkpoint_matches_through_the_pytorch_oracle(lora_run, tmp_path):
    import transformers

    trainer, workdir = lora_run
    out = str(tmp_path / "hf")
    export_hf(workdir, out, dtype="float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = trainer.tokenizer
    rows = [tok(t)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    with torch.no_grad():
        ref, _ = oracle.latent_view(model, ids, mask, 3)
    ours = LaserEncoder.from_pretrained(workdir, dtype="float32").encode(TEXTS)
    assert np.sum(ours * ref.numpy(), -1).min() > 0.9999


def test_frozen_teacher_gives_no_gradient_through_the_explicit_side(task, lora_run, tmp_path):  # noqa: F811
    _, teacher_dir = lora_run
    # Only the explicit contrastive term, computed by the frozen teacher: nothing to learn.
    config = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "train.num_steps": 1,
                                   "laser.teacher_from": teacher_dir, "laser.lambda_latent": 0.0,
                                   "laser.lambda_kl_out": 0.0, "laser.lambda_kl_mid": 0.0})
    _, rows = train(config, tmp_path / "student")
    assert rows[0]["loss_cl_explicit"] > 0 and rows[0]["l2_grads"] == 0.0
    # With the latent terms on, the student learns from the teacher's targets.
    config = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "train.num_steps": 1,
                                   "laser.teacher_from": teacher_dir})
    _, rows = train(config, tmp_path / "student2")
    assert rows[0]["l2_grads"] > 0 and rows[0]["loss_kl_out"] > 0


def test_a_checkpoint_trained_with_cudnn_loads_with_this_machines_attention_kernel():
    """A GPU run stores attention_impl='cudnn'; inference on CPU must not ask for cuDNN."""
    import dataclasses

    from laser_jax.inference.load import model_config_from_meta
    from laser_jax.model.config import preset

    meta = {"model": dataclasses.asdict(preset("tiny_qwen3", attention_impl="cudnn",
                                               compute_dtype="bfloat16"))}
    assert jax.default_backend() == "cpu"
    assert model_config_from_meta(meta).attention_impl is None
    assert model_config_from_meta(meta, "float32").attention_impl is None
