"""laser_jax.plan: ahead-of-time memory plan of the real train step on a simulated mesh."""
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from laser_jax.train.plan import ACCELERATORS, GIB, plan_step, tpu_topology_name, tree_bytes
from laser_jax.train.config import base_config, shrink_for_smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(**overrides):
    """configs/qwen3_0p6b.py:smoke (the base config is Qwen3-0.6B's) with overrides."""
    c = shrink_for_smoke(base_config())
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    return c


def expected_per_device(tree, mesh_shape):
    """Bytes per device of a tree of sharded ShapeDtypeStructs: each leaf's bytes divided by
    the product of the mesh axes its PartitionSpec names."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        axes = [a for entry in x.sharding.spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
        factor = math.prod(mesh_shape[a] for a in axes)
        total += math.prod(x.shape) * x.dtype.itemsize // factor
    return total


@pytest.fixture(scope="module")
def full_plan():
    return plan_step(smoke(**{"lora.rank": 0}), devices=jax.devices()[:8], mesh_shape=(2, 2, 2),
                     accelerator="h100")


def test_parameter_and_optimizer_bytes_follow_the_sharding(full_plan):
    p = full_plan
    assert p.mesh == {"data": 2, "fsdp": 2, "tensor": 2} and p.mode == "full"
    assert p.params_frozen == 0
    assert p.total_param_bytes == p.num_params * 4  # float32 parameters
    # Weights are split over fsdp x tensor (4); only norm scales stay replicated.
    assert p.total_param_bytes / 4 <= p.params_trainable < 1.02 * p.total_param_bytes / 4
    # AdamW: mu and nu shaped and sharded like the parameters, plus scalar counts.
    assert 2 * p.params_trainable <= p.optimizer_state <= 2 * p.params_trainable + 64
    # The compiled program's arguments are exactly state + batch (+ step and rng key).
    assert p.arguments - (p.params_trainable + p.optimizer_state + p.batch_bytes) in range(0, 64)
    assert p.aliased >= p.params_trainable + p.optimizer_state  # the state is donated
    assert p.peak == p.arguments + p.temporaries + p.outputs - p.aliased and p.temporaries > 0


def test_per_device_bytes_equal_total_over_the_sharding_factor():
    from laser_jax.train import setup

    c = smoke()
    cfg = setup.model_config(c, None)
    mesh = setup.run_mesh(c, jax.devices()[:8], (2, 2, 2))
    state = setup.build_program(c, cfg, mesh, 10, 0).abstract_state
    for part in (state.trainable, state.frozen, state.opt_state):
        assert tree_bytes(part) == expected_per_device(part, dict(mesh.shape))
    assert tree_bytes(state.frozen, per_device=False) == cfg.num_params() * 4  # float32 smoke base


def test_verdict_against_a_tiny_fake_accelerator(full_plan):
    assert full_plan.fits and full_plan.capacity == ACCELERATORS["h100"] * GIB
    tiny = full_plan.against(full_plan.peak, headroom=0.9)  # 90% of the peak is usable: no
    assert not tiny.fits and tiny.usable < tiny.peak
    roomy = full_plan.against(int(full_plan.peak / 0.9) + 1, headroom=0.9)
    assert roomy.fits


def test_cli_writes_the_table_and_json(tmp_path):
    out = tmp_path / "plan.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "laser_jax.plan", "--config=configs/qwen3_0p6b.py:smoke",
                           "--mesh=2,2,2", "--devices=8", "--accelerator=v5e", "--backend=cpu",
                           "--budget_gib=0.001", "--batch_size=8", f"--output={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DOES NOT FIT" in proc.stdout and "peak = args + temps + outputs - aliased" in proc.stdout
    p = json.loads(out.read_text())
    assert p["mode"] == "LoRA r=4" and p["batch"]["queries"] == 8 and p["fits"] is False
    assert p["compiled_for"].startswith("8 simulated CPU devices")
    assert p["params_frozen"] > 0 and p["params_trainable"] > 0
    assert p["peak"] == p["arguments"] + p["temporaries"] + p["outputs"] - p["aliased"]


def test_cli_names_a_bad_mesh():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "laser_jax.plan", "--config=configs/qwen3_0p6b.py:smoke",
                           "--mesh=2,2,2", "--devices=4"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "mesh.shape" in proc.stderr


def test_tpu_topology_names():
    assert tpu_topology_name("v5e", 8) == "v5e:2x4"
    assert tpu_topology_name("v5p", 4) == "v5p:2x2x1"
    with pytest.raises(ValueError, match="--topology"):
        tpu_topology_name("v5e", 3)


def test_activations_stay_split_over_the_batch_on_an_fsdp_mesh():
    """Weights wide relative to the batch: XLA alone (jax 0.10.2) gathers the activations,
    so each of 8 FSDP devices held the whole batch's (7x the temporaries here);
    `batch_sharded_activations` (used by jit_train_step) keeps them split over the batch
    and gathers the weights instead: per-device temporaries are a fraction of one device's."""
    import flax.linen as nn
    import jax.numpy as jnp

    from laser_jax.train import sharding
    from laser_jax.model.config import preset
    from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask

    cfg = preset("tiny_qwen3", vocab_size=64, hidden_size=256, intermediate_size=2048, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, compute_dtype="bfloat16")
    model = Decoder(cfg)
    boxed = jax.eval_shape(lambda: init_variables(cfg, jax.random.key(0), boxed=True))

    def loss(v, tokens):
        mask = jnp.ones_like(tokens)
        out = model.apply(v, tokens, positions_BT=positions_from_mask(mask), kv_mask_BS=mask)
        return jnp.sum(out.hidden.astype(jnp.float32) ** 2)

    def temporaries(n):
        mesh = sharding.make_mesh((1, n, 1), jax.devices()[:n])
        variables = sharding.abstract_sharded(nn.unbox(boxed), sharding.logical_shardings(mesh, boxed))
        ids = jax.ShapeDtypeStruct((24, 512), jnp.int32, sharding=sharding.batch_sharding(mesh))

        def grads(v, tokens):
            with sharding.batch_sharded_activations(mesh):
                return jax.grad(loss)(v, tokens)

        return jax.jit(grads).lower(variables, ids).compile().memory_analysis().temp_size_in_bytes

    one, eight = temporaries(1), temporaries(8)
    assert eight * 4 < one, (one, eight)


def test_a_tpu_out_of_memory_refusal_becomes_a_does_not_fit_figure():
    from laser_jax.train.plan import out_of_memory_temporaries

    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(18.02G) exceeds available HBM (15.75G).")
    assert out_of_memory_temporaries(message) == int(18.02 * GIB)
    assert out_of_memory_temporaries("INVALID_ARGUMENT: something else") is None
