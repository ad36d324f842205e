"""Fused LoRA (model/lora.py, layers.LoRA): one adapter pair per group of projections computes
what one pair per projection computes (outputs and gradients), merges the same, draws no
dropout mask at dropout 0, and checkpoints written in the per-projection layout (before issue
22) restore into it, for inference and for resuming training."""
import functools
import shutil

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import traverse_util

from laser_jax.inference import load as load_lib
from laser_jax.method.losses import LossConfig
from laser_jax.model import dropout, lora
from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask
from laser_jax.model.layers import LoRA
from laser_jax.train import checkpoint as ckpt_lib
from laser_jax.train import loop
from laser_jax.train.step import StepConfig, init_state, make_optimizer, train_step
from laser_jax.train.trainer import set_up
from test_train import LOSS_KEYS, small_config, task, train  # noqa: F401  (task is a fixture)

# Qwen3 with every projection adapted; Llama with a subset, so q (wider than k/v) shares a group
# with v alone and up is a group of one.
CASES = {"qwen3": ("tiny_qwen3", lora.PROJECTIONS),
         "llama": ("tiny_llama", ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))}


def lora_cfg(case, **kw):
    name, targets = CASES[case]
    return preset(name, lora_rank=4, lora_alpha=6.0, lora_targets=targets, **kw)


def random_like(tree, seed, scale=0.3):
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), tree)


def reference_merge(params, per_projection, scale):
    """kernel + a @ b * scale for each projection's own (a, b): LoRA's definition."""
    flat = traverse_util.flatten_dict(params)
    for key, a in traverse_util.flatten_dict(per_projection).items():
        if key[-1] == "a":
            b = traverse_util.flatten_dict(per_projection)[key[:-1] + ("b",)]
            flat[key[:-1] + ("kernel",)] = flat[key[:-1] + ("kernel",)] + jnp.einsum("lir,lro->lio", a, b) * scale
    return traverse_util.unflatten_dict(flat)


def batch():
    rng = np.random.RandomState(3)
    ids = jnp.asarray(rng.randint(3, 500, (3, 11)))
    mask = jnp.asarray(np.array([[0] * 4 + [1] * 7, [1] * 11, [0] * 8 + [1] * 3]))
    return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_adapters_equal_one_adapter_per_projection_outputs_and_gradients(case):
    cfg = lora_cfg(case)
    variables = init_variables(cfg, jax.random.key(0))
    per_projection = random_like(lora.split_layout(variables["lora"], cfg), 1)  # b != 0: gradients reach a
    ids, mask = batch()
    w = jax.random.normal(jax.random.key(2), ids.shape + (cfg.vocab_size,))

    def fused(pp):
        out = Decoder(cfg).apply({"params": variables["params"], "lora": lora.fuse_layout(pp)}, ids,
                                 positions_BT=positions_from_mask(mask), kv_mask_BS=mask, logits="all")
        return jnp.sum(out.logits * w), out.logits

    def merged(pp):
        params = reference_merge(variables["params"], pp, cfg.lora_alpha / cfg.lora_rank)
        out = Decoder(cfg.replace(lora_rank=0)).apply({"params": params}, ids, positions_BT=positions_from_mask(mask),
                                                      kv_mask_BS=mask, logits="all")
        return jnp.sum(out.logits * w), out.logits

    (_, got), g = jax.jit(jax.value_and_grad(fused, has_aux=True))(per_projection)
    (_, want), g_ref = jax.jit(jax.value_and_grad(merged, has_aux=True))(per_projection)
    np.testing.assert_allclose(got, want, atol=2e-5 * float(jnp.abs(want).max()))
    assert set(traverse_util.flatten_dict(g)) == set(traverse_util.flatten_dict(g_ref))
    for key, ref in traverse_util.flatten_dict(g_ref).items():
        np.testing.assert_allclose(traverse_util.flatten_dict(g)[key], ref, atol=2e-5 * float(jnp.abs(ref).max()),
                                   err_msg="/".join(key))


def test_layout_names_mapping_and_merge():
    cfg = lora_cfg("llama")
    variables = init_variables(cfg, jax.random.key(0))
    fused = random_like(variables["lora"], 4)
    layer = fused["layers"]
    assert set(layer["self_attn"]) == {"lora_q_v", "lora_o"} and set(layer["mlp"]) == {"lora_up", "lora_down"}
    assert layer["self_attn"]["lora_q_v"]["a"].shape == (2, 64, 2 * 4)  # [L, in, n R]
    assert layer["self_attn"]["lora_q_v"]["b"].shape == (2, 4, 64 + 32)  # [L, R, out_q + out_v]
    assert lora.group_members("lora_gate_up") == ("gate_proj", "up_proj")
    with pytest.raises(ValueError, match="'lora_x_y' is not a LoRA adapter group name"):
        lora.group_members("lora_x_y")
    per_projection = lora.split_layout(fused, cfg)
    assert set(per_projection["layers"]["self_attn"]) == {"q_proj", "v_proj", "o_proj"}
    assert lora.has_per_projection_layout(per_projection) and not lora.has_per_projection_layout(fused)
    back = lora.fuse_layout(per_projection)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, fused)
    # merge: unchanged in result, from either layout
    want = reference_merge(variables["params"], per_projection, cfg.lora_alpha / cfg.lora_rank)
    for adapters in (fused, per_projection):
        jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, atol=1e-6),
                               lora.merge(variables["params"], adapters, cfg), want)


def test_dropout_draws_an_independent_mask_per_member_and_none_without_an_rng():
    cfg = preset("tiny_qwen3", lora_rank=2, lora_alpha=2.0, lora_dropout=0.5)
    module = LoRA((6, 6), "embed", "mlp", cfg)
    x = jnp.ones((1, 64, 8))
    v = module.init({"params": jax.random.key(0)}, x)
    a = jnp.tile(jnp.ones((8, 2)), (1, 2))  # both members: the same a and b
    v = {"lora": {"a": a, "b": jnp.ones((2, 12))}}
    plain = module.apply(v, x)
    np.testing.assert_array_equal(plain[0], plain[1])
    np.testing.assert_allclose(plain[0], 16.0)  # 8 inputs x rank 2 x alpha / rank
    first, second = module.apply(v, x, rngs={"dropout": jax.random.key(1)})
    assert float(jnp.abs(first - second).max()) > 1.0  # two masks, not one shared
    np.testing.assert_allclose(float(first.mean()), 16.0, rtol=0.15)  # inverted dropout keeps the mean


def _step_jaxpr(dropout):
    cfg = preset("tiny_qwen3", lora_rank=2, lora_dropout=dropout, compute_dtype="bfloat16")
    train_cfg = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=1.0, adam_b1=0.9,
                                               adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0))
    tx = make_optimizer(train_cfg, 10)
    state = init_state(cfg, tx, jax.random.key(0))
    ones = lambda b, t: jnp.ones((b, t), jnp.int32)  # noqa: E731
    data = {"q_ids": ones(2, 6), "q_mask": ones(2, 6), "d_ids": ones(4, 6), "d_mask": ones(4, 6),
            "e_ids": ones(2, 9), "e_mask": ones(2, 9), "e_seg": jnp.asarray([[3, 6, 9]] * 2)}
    step = functools.partial(train_step, Decoder(cfg), tx, StepConfig(3, LossConfig(), eos_id=2))
    return str(jax.make_jaxpr(step)(state, data)), state


def test_no_dropout_mask_at_dropout_zero_and_adapters_cast_once():
    text, state = _step_jaxpr(0.0)
    # model/dropout.py's own threefry ops carry the key-schedule parity constant
    drawn = ("random_bits", "threefry2x32", f"{dropout.KEY_PARITY}:u32[]")
    assert not any(p in text for p in drawn)  # dropout 0: no mask is drawn (only the key is folded)
    assert drawn[2] in _step_jaxpr(0.1)[0]
    # fp32 master adapters in the state; the step reads them in the compute dtype
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.trainable)} == {jnp.dtype("float32")}
    cast = lora.adapters_for_compute({"lora": state.trainable["lora"]}, preset("tiny_qwen3", compute_dtype="bfloat16"))
    assert {x.dtype for x in jax.tree_util.tree_leaves(cast)} == {jnp.dtype("bfloat16")}


# ---------------------------------------------------------------------- old-layout checkpoints
def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def test_a_per_projection_checkpoint_restores_into_the_fused_layout(tmp_path):
    cfg = lora_cfg("qwen3", compute_dtype="float32")
    tx = make_optimizer(ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=1.0,
                                                       adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
                                                       weight_decay=0.0)), 10)
    state = init_state(cfg, tx, jax.random.key(0))
    state = state.replace(trainable=random_like(state.trainable, 5),
                          opt_state=jax.tree_util.tree_map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x,
                                                           state.opt_state))
    old = lora.split_layout(state, cfg)  # adapters and both Adam moments, per projection
    assert lora.has_per_projection_layout(old.opt_state)
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    checkpointer.save(1, old)
    checkpointer.wait()
    restored, step = ckpt_lib.Checkpointer(str(tmp_path), async_save=False).restore(_abstract(state), model_cfg=cfg)
    assert step == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)
    # inference reads it too
    variables = load_lib.restore_variables(str(tmp_path / "checkpoints" / "1"), cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, state.variables())
    # without the model config the old layout is not guessed: the restore fails, moving nothing
    with pytest.raises(ckpt_lib.CheckpointRestoreError, match="no checkpoint .* could be restored"):
        ckpt_lib.Checkpointer(str(tmp_path), async_save=False).restore(_abstract(state))
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_training_resumes_from_a_per_projection_checkpoint(task, tmp_path):  # noqa: F811
    config = small_config(task, **{"lora.rank": 4, "lora.alpha": 8.0, "train.num_steps": 3,
                                   "checkpoint.every_steps": 2, "train.learning_rate": 5e-2})
    run = set_up(config, str(tmp_path / "fused"))
    loop.train(run, until=2)
    shutil.copytree(tmp_path / "fused", tmp_path / "old")
    state_dir = tmp_path / "old" / "checkpoints" / "2" / "state"
    restored, _ = ckpt_lib.Checkpointer(str(tmp_path / "fused"), async_save=False).restore(run.abstract_state)
    shutil.rmtree(state_dir)
    with ocp.PyTreeCheckpointer() as checkpointer:  # the state item as the code before issue 22 wrote it
        checkpointer.save(str(state_dir), lora.split_layout(restored, run.model_cfg))
    _, fused_rows = train(config, tmp_path / "fused")
    old_trainer, old_rows = train(config, tmp_path / "old")
    assert [r["step"] for r in old_rows] == [1, 2, 3]
    np.testing.assert_allclose([[r[k] for k in LOSS_KEYS] for r in old_rows],
                               [[r[k] for k in LOSS_KEYS] for r in fused_rows], rtol=1e-6)
    assert "lora_q_k_v" in old_trainer.state.trainable["lora"]["layers"]["self_attn"]
