"""Hugging Face import/export: round trips, sharded files, errors, LoRA merge, sharded placement."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hf_models import build_hf_model
from laser_jax.model import hf_io
from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask


def hf_state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def forward_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), output_hidden_states=True).hidden_states[-1].numpy()


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
def test_import_export_reload_gives_identical_tensors_and_outputs(family, tmp_path):
    import transformers

    src = build_hf_model(family, str(tmp_path / "src"))
    cfg, params = hf_io.load_pretrained(str(tmp_path / "src"))
    hf_io.save_pretrained(str(tmp_path / "out"), params, cfg, dtype="float32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    a, b = hf_state(src), hf_state(back)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ids = np.random.RandomState(0).randint(0, 400, (2, 9))
    np.testing.assert_array_equal(forward_hidden(src, ids), forward_hidden(back, ids))
    # And the export re-imports to the same parameters.
    _, again = hf_io.load_pretrained(str(tmp_path / "out"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)


def test_sharded_checkpoint_round_trip_and_bf16(tmp_path):
    import transformers

    src = build_hf_model("qwen3", str(tmp_path / "src"))
    cfg, params = hf_io.load_pretrained(str(tmp_path / "src"))
    out = str(tmp_path / "sharded")
    hf_io.save_pretrained(out, params, cfg, dtype="float32", max_shard_bytes=60_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.load(open(os.path.join(out, hf_io.INDEX_FILE)))
    assert set(index["weight_map"].values()) == set(files)
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    for name, t in hf_state(src).items():
        np.testing.assert_array_equal(t, hf_state(back)[name], err_msg=name)
    # Importing the sharded files gives the same parameters.
    _, again = hf_io.load_pretrained(out)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)
    # bf16 export: transformers reads bf16 back, and our import upcasts exactly.
    hf_io.save_pretrained(str(tmp_path / "bf16"), params, cfg, dtype="bfloat16")
    bf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"))
    assert bf.model.embed_tokens.weight.dtype == torch.bfloat16
    _, from_bf16 = hf_io.load_pretrained(str(tmp_path / "bf16"))
    want = np.asarray(jnp.asarray(params["norm"]["scale"]).astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(from_bf16["norm"]["scale"]), want)


def test_missing_and_misshaped_tensors_are_all_named_in_one_error(tmp_path):
    build_hf_model("qwen2", str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    del tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((7, 64), np.float32)
    tensors["model.layers.0.self_attn.extra.weight"] = np.zeros((2,), np.float32)
    save_file(tensors, path)
    with pytest.raises(hf_io.CheckpointMismatchError) as err:
        hf_io.load_pretrained(str(tmp_path))
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "missing tensor model.layers.1.mlp.up_proj.weight" in msg
    assert "missing tensor model.norm.weight" in msg
    assert "mis-shaped tensor model.layers.0.self_attn.k_proj.weight: checkpoint [7, 64]" in msg
    assert "unexpected tensor model.layers.0.self_attn.extra.weight" in msg


def test_directory_without_weights_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_io.load_pretrained(str(tmp_path))
    build_hf_model("llama", str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf_io.load_pretrained(str(tmp_path))


def test_lora_is_merged_on_export(tmp_path):
    import transformers

    build_hf_model("llama", str(tmp_path / "src"))
    cfg, params = hf_io.load_pretrained(str(tmp_path / "src"))
    lcfg = cfg.replace(lora_rank=4, lora_alpha=16.0)
    lora = init_variables(lcfg, jax.random.key(0))["lora"]
    lora = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), lora)
    hf_io.save_pretrained(str(tmp_path / "merged"), params, lcfg, lora=lora, dtype="float32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    ids = np.random.RandomState(1).randint(0, 400, (2, 7))
    mask = jnp.ones(ids.shape, jnp.int32)
    ours = Decoder(lcfg).apply({"params": params, "lora": lora}, jnp.asarray(ids),
                               positions_BT=positions_from_mask(mask), kv_mask_BS=mask).hidden
    np.testing.assert_allclose(forward_hidden(back, ids), np.asarray(ours), atol=1e-4)


def test_import_places_each_tensor_on_its_target_sharding(tmp_path):
    build_hf_model("qwen3", str(tmp_path))
    cfg = hf_io.from_hf_config(str(tmp_path))
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("fsdp", "tensor"))
    skeleton = hf_io.abstract_variables(cfg)["params"]

    def sharding(path, leaf):
        name = "/".join(p.key for p in path)
        if name.endswith("q_proj/kernel"):
            return NamedSharding(mesh, P(None, "fsdp", "tensor"))
        if name == "embed_tokens/embedding":
            return NamedSharding(mesh, P("tensor", "fsdp"))
        return NamedSharding(mesh, P())

    shardings = jax.tree_util.tree_map_with_path(sharding, skeleton)
    _, ref = hf_io.load_pretrained(str(tmp_path))
    _, sharded = hf_io.load_pretrained(str(tmp_path), shardings=shardings)
    q = sharded["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.sharding == shardings["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.addressable_shards[0].data.shape == (2, 64 // 2, 96 // 4)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ref, sharded)
