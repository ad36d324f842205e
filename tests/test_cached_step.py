"""Cached (GradCache-style) step: same gradients and update as the plain step, less memory."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from laser_jax.train.cached_step import cached_gradients, student_representations
from laser_jax.method.losses import LossConfig, laser_loss
from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder
from laser_jax.method.objective import laser_objective
from laser_jax.train.microbatches import split_microbatches
from laser_jax.train.step import StepConfig, init_state, train_step

B, G, J, EOS = 4, 2, 3, 1


def tiny_cfg(lora_rank=0, dropout=0.0):
    return preset("tiny_qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, scan_layers=False, lora_rank=lora_rank, lora_alpha=8.0,
                  lora_dropout=dropout)


def left_padded(rng, rows, width, min_len):
    lengths = rng.randint(min_len, width + 1, size=rows)
    ids = rng.randint(2, 64, size=(rows, width)).astype(np.int32)
    mask = (np.arange(width)[None] >= width - lengths[:, None]).astype(np.int32)
    return ids * mask, mask


def make_batch(seed=0, b=B, q_len=16, d_len=16, e_len=24):
    """Random left-padded token batch in the training layout (docs/architecture.md)."""
    rng = np.random.RandomState(seed)
    q_ids, q_mask = left_padded(rng, b, q_len, 4)
    d_ids, d_mask = left_padded(rng, b * G, d_len, 4)
    e_ids, e_mask = left_padded(rng, b, e_len, 8)
    e_seg = np.sort(rng.randint(e_len - 6, e_len + 1, size=(b, J)), axis=1).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in dict(q_ids=q_ids, q_mask=q_mask, d_ids=d_ids, d_mask=d_mask,
                                                e_ids=e_ids, e_mask=e_mask, e_seg=e_seg).items()}


def setup(lora_rank, chunk, dropout=0.0):
    cfg = tiny_cfg(lora_rank, dropout)
    tx = optax.adamw(1e-3)
    state = init_state(cfg, tx, jax.random.key(0))
    if lora_rank:  # non-zero adapters, so gradients reach both a and b
        state = state.replace(trainable=jax.tree_util.tree_map(
            lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), state.trainable))
    step_cfg = StepConfig(num_thinking_steps=J, loss=LossConfig(), eos_id=EOS, cache_chunk_size=chunk)
    return Decoder(cfg), tx, state, step_cfg


def assert_trees_close(a, b, rtol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(np.abs(y).max(), 1e-30)
        assert np.abs(x - y).max() <= rtol * scale, (jax.tree_util.keystr(path), np.abs(x - y).max(), scale)


@pytest.mark.parametrize("lora_rank,chunk", [(0, 2), (4, 1)])
def test_cached_gradients_and_update_equal_the_plain_step(lora_rank, chunk):
    model, tx, state, step_cfg = setup(lora_rank, chunk)
    batch = make_batch()

    def plain_grads(trainable):
        return laser_objective(model, {**state.frozen, **trainable}, batch, num_steps=J, loss_cfg=step_cfg.loss,
                               eos_id=EOS)

    (_, plain_metrics), plain = jax.jit(jax.value_and_grad(plain_grads, has_aux=True))(state.trainable)
    cached, cached_metrics = jax.jit(lambda t: cached_gradients(model, step_cfg, t, state.frozen, batch, None))(
        state.trainable)
    assert_trees_close(cached, plain, 1e-5)
    for key in ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid"):
        np.testing.assert_allclose(cached_metrics[key], plain_metrics[key], rtol=1e-5, err_msg=key)

    plain_cfg = dataclasses.replace(step_cfg, cache_chunk_size=0)
    plain_state, plain_m = jax.jit(functools.partial(train_step, model, tx, plain_cfg))(state, batch)
    cached_state, cached_m = jax.jit(functools.partial(train_step, model, tx, step_cfg))(state, batch)
    assert_trees_close(cached_state.trainable, plain_state.trainable, 1e-5)
    np.testing.assert_allclose(cached_m["l2_grads"], plain_m["l2_grads"], rtol=1e-5)
    assert int(cached_state.step) == 1 and float(cached_m["finite"]) == 1.0


def test_dropout_keys_match_between_the_forward_and_backward_passes():
    """With LoRA dropout on, the cached gradient equals the gradient of one differentiable
    graph that encodes each chunk with the same per-chunk key (fold_in(rng, chunk))."""
    model, _, state, step_cfg = setup(4, 2, dropout=0.5)
    batch, rng = make_batch(1), jax.random.key(7)
    n = B // 2
    chunks = split_microbatches(batch, n)

    def reference(trainable):
        reps = [student_representations(model, {**state.frozen, **trainable},
                                        jax.tree_util.tree_map(lambda x: x[i], chunks), num_steps=J,
                                        loss_cfg=step_cfg.loss, eos_id=EOS, rng=jax.random.fold_in(rng, i))
                for i in range(n)]
        merged = {k: jnp.concatenate([r[k] for r in reps]) for k in reps[0]}
        return laser_loss(step_cfg.loss, **merged)[0]

    expected = jax.jit(jax.grad(reference))(state.trainable)
    cached = jax.jit(lambda t, key: cached_gradients(model, step_cfg, t, state.frozen, batch, key)[0])
    got = cached(state.trainable, rng)
    assert_trees_close(got, expected, 1e-5)
    # ... and dropout is really on: another key changes the gradient.
    other = cached(state.trainable, jax.random.key(8))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(other),
                                                             jax.tree_util.tree_leaves(got)))
    assert diff > 1e-4


def test_a_frozen_teacher_gives_the_plain_steps_gradient():
    model, _, state, step_cfg = setup(0, 2)
    batch = make_batch(2)
    teacher = jax.tree_util.tree_map(lambda x: x * 1.1, state.trainable)

    def plain(trainable):
        return laser_objective(model, {**state.frozen, **trainable}, batch, num_steps=J, loss_cfg=step_cfg.loss,
                               eos_id=EOS, teacher_variables=teacher)[0]

    expected = jax.jit(jax.grad(plain))(state.trainable)
    got, _ = jax.jit(lambda t: cached_gradients(model, step_cfg, t, state.frozen, batch, None, teacher))(
        state.trainable)
    assert_trees_close(got, expected, 1e-5)


def test_chunk_size_must_divide_the_batch():
    model, _, state, step_cfg = setup(0, 3)
    with pytest.raises(ValueError, match="does not divide"):
        cached_gradients(model, step_cfg, state.trainable, state.frozen, make_batch(), None)


def test_a_batch_too_big_for_the_plain_step_fits_cached():
    """laser_jax.plan on one device: the cached step's temporaries grow with the chunk (4
    queries), the plain step's with the batch (32); a device between the two peaks holds
    only the cached step."""
    from laser_jax.train.plan import plan_step
    from laser_jax.train.config import base_config, shrink_for_smoke

    plans = {}
    for chunk in (0, 4):
        c = shrink_for_smoke(base_config())
        c.model.num_hidden_layers = 1
        c.train.batch_size = 32
        c.train.cache_chunk_size = chunk
        plans[chunk] = plan_step(c, devices=jax.devices()[:1], mesh_shape=(1, 1, 1))
    plain, cached = plans[0], plans[4]
    assert plain.arguments == cached.arguments
    assert cached.temporaries < plain.temporaries / 4, (cached.temporaries, plain.temporaries)
    budget = (plain.peak + cached.peak) // 2 / 0.9  # usable memory halfway between the peaks
    assert not plain.against(budget, 0.9).fits and cached.against(budget, 0.9).fits


def test_the_trainer_runs_the_cached_step_on_a_2x2x2_mesh_like_the_plain_step_on_one_device(tmp_path):
    """End to end: train.cache_chunk_size reaches the step through the trainer unchanged;
    4-query chunks on 8 devices give the plain single-device run's losses."""
    from test_train import losses, small_config, train
    from laser_jax.data.synthetic import ensure_generated

    task = ensure_generated(str(tmp_path / "task"), seed=0, n_train=64, n_eval_per_domain=4)
    lr = {"train.learning_rate": 1e-4}
    _, plain = train(small_config(task, **lr), tmp_path / "plain")
    cached_cfg = small_config(task, **lr, **{"train.cache_chunk_size": 4, "mesh.num_devices": 8,
                                             "mesh.shape": (2, 2, 2)})
    _, cached = train(cached_cfg, tmp_path / "cached")
    assert [r["step"] for r in cached] == [1, 2, 3]
    np.testing.assert_allclose(losses(cached), losses(plain), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r["l2_grads"] for r in cached], [r["l2_grads"] for r in plain], rtol=1e-5)
