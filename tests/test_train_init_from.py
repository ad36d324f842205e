"""A damaged Hugging Face directory in `model.init_from` (issue 17): a truncated
model.safetensors or a config.json field of the wrong type is one "error: model.init_from: ..."
line naming the file and the field, exit 2, before training."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from laser_jax.model.config import from_hf_config
from laser_jax.model.hf_io import SafetensorsDir, WeightsFileError
from test_reliability import ARCH_ZERO, _hf_dir, rtask, run_main, tiny_config  # noqa: F401 (rtask: a fixture)


def _weights(path):
    save_file({"model.embed_tokens.weight": np.ones((768, 32), np.float32),
               "model.norm.weight": np.ones((32,), np.float32)}, str(path))
    return path


@pytest.mark.parametrize("keep", [0.5, 4 / 9000])
def test_a_truncated_safetensors_file_is_named(tmp_path, keep):
    path = _weights(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:max(int(len(data) * keep), 4)])
    with pytest.raises(WeightsFileError, match=f"{path}: (truncated|not a readable safetensors file)"):
        SafetensorsDir(str(tmp_path))


@pytest.mark.parametrize("field, value, expected", [
    ("num_hidden_layers", None, "field 'num_hidden_layers' is None, expected an integer"),
    ("hidden_size", "32", "field 'hidden_size' is '32', expected an integer"),
    ("num_attention_heads", 0, "field 'num_attention_heads' is 0, expected a positive number"),
])
def test_a_config_json_field_of_the_wrong_type_is_named(tmp_path, field, value, expected):
    cfg = dict(model_type="qwen3", vocab_size=768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json: {expected}"):
        from_hf_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match=f"{tmp_path}/config.json: not valid JSON"):
        from_hf_config(str(tmp_path))


def test_train_with_a_damaged_init_from_exits_2_naming_file_and_field(rtask, tmp_path, capsys):
    d = _hf_dir(tmp_path, rtask)
    path = _weights(d / "model.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    overrides = {"model.init_from": str(d), "model.tokenizer": "", **ARCH_ZERO}
    code, err = run_main(tiny_config(rtask, **overrides), tmp_path / "run", capsys)
    assert code == 2 and err.startswith(f"error: model.init_from: {path}: truncated") and "Traceback" not in err
    path.unlink()
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": None}))
    code, err = run_main(tiny_config(rtask, **overrides), tmp_path / "run", capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: model.init_from: {d}/config.json: field 'num_hidden_layers' is None"), err
