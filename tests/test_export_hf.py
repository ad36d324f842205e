"""export_hf: LoRA-merged HF export + laser.json + model card; PyTorch latent loop parity."""
import json
import os
import re

import jax
import numpy as np
import pytest
from safetensors import safe_open

from hf_models import build_hf_model
from laser_jax.inference import export_hf
from laser_jax.inference import load as model_io
from laser_jax.inference import torch_encoder
from laser_jax.data.formatting import TextFormat
from laser_jax.inference.encoder import LaserEncoder
from laser_jax.model.decoder import abstract_variables

QUERIES = ["What is 3 plus 4?", "What is 11 plus 2?", "What is 0 plus 6?"]
DOCS = ["The number 7 is the sum of two smaller numbers.", "First, take 5.\n\nThen add 4 to it",
        "some describe cats, others describe the weather in a town."]
INSTRUCTION = "Given a question, retrieve passages that answer it."
TEMPLATE = "Task: {instruction} | {query}"
# One length bucket (16) and one batch size, so each LaserEncoder compiles once.
ENC = dict(batch_size=4, max_length=16)


@pytest.fixture(scope="module")
def src_dir(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("src"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_model(src_dir):
    """A LoadedModel with random LoRA adapters (b != 0, so they change the outputs)."""
    base = model_io.load_hf_dir(src_dir, "float32")
    cfg = base.cfg.replace(lora_rank=4, lora_alpha=8.0)
    rng = np.random.RandomState(0)
    # Random a and b (b != 0, so the adapters change the outputs); shapes from the model.
    lora = jax.tree_util.tree_map(lambda x: (0.3 * rng.normal(size=x.shape)).astype(x.dtype),
                                  abstract_variables(cfg)["lora"])
    variables = {"params": base.variables["params"], "lora": lora}
    return model_io.LoadedModel(cfg, variables, base.tokenizer, TextFormat(query_template=TEMPLATE), 2)


@pytest.fixture(scope="module")
def exported(lora_model, src_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "hf")
    export_hf.export_loaded(lora_model, out, dtype="float32", source=src_dir)
    return out


def _cos(a, b):
    return np.sum(a * b, axis=-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def unmerged(lora_model):
    """LaserEncoder over the un-merged variables (params + lora)."""
    return LaserEncoder(lora_model.cfg, lora_model.variables, lora_model.tokenizer, lora_model.text_format,
                        lora_model.num_thinking_steps)


def test_merged_export_with_torch_latent_loop_equals_unmerged_laser_encoder(unmerged, exported, src_dir):
    q_jax = unmerged.encode_queries(QUERIES, INSTRUCTION, **ENC)
    d_jax = unmerged.encode_documents(DOCS, **ENC)
    model, tok, meta = torch_encoder.load(exported)
    assert meta == {"num_thinking_steps": 2, "query_template": TEMPLATE, "chat_template": False}
    K, L = meta["num_thinking_steps"], ENC["max_length"]
    q_pt = torch_encoder.latent_embed(model, tok, torch_encoder.format_texts(tok, QUERIES, meta, INSTRUCTION),
                                      K, max_length=L)
    d_pt = torch_encoder.latent_embed(model, tok, torch_encoder.format_texts(tok, DOCS, meta), K,
                                      max_length=L, batch_size=2)
    assert q_pt.shape == q_jax.shape and q_pt.dtype == np.float32
    assert _cos(q_pt, q_jax).min() > 0.9999 and _cos(d_pt, d_jax).min() > 0.9999
    # The adapters matter: the base model's embeddings are clearly different.
    base, tok, _ = torch_encoder.load(src_dir)
    assert _cos(torch_encoder.latent_embed(base, tok, DOCS, K, max_length=L), d_jax).min() < 0.999


def test_export_writes_laser_meta_readme_and_tokenizer(exported):
    names = set(os.listdir(exported))
    assert {"config.json", "model.safetensors", "laser.json", "README.md", "tokenizer.json"} <= names
    assert model_io.read_laser_meta(exported)["num_thinking_steps"] == 2
    with safe_open(os.path.join(exported, "model.safetensors"), "np") as f:
        assert not any("lora" in k for k in f.keys())
    card = open(os.path.join(exported, "README.md")).read()
    assert "| num_thinking_steps (K) | 2 |" in card and "LoRA adapters were merged" in card


def test_readme_torch_snippet_runs_and_matches_module(exported):
    card = open(os.path.join(exported, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3 and "LaserEncoder.from_pretrained" in blocks[0]
    assert "SentenceTransformer(" in blocks[1]
    scope = {}
    exec(blocks[2].replace(export_hf.MODEL_DIR_PLACEHOLDER, exported), scope)  # noqa: S102
    model, tok, meta = torch_encoder.load(exported)
    want = torch_encoder.latent_embed(model, tok, scope["queries"], 2)
    np.testing.assert_allclose(scope["q"], want, atol=1e-6)
    assert scope["scores"].shape == (1, 1)


def test_laser_encoder_reads_the_export(exported, unmerged):
    enc = LaserEncoder.from_pretrained(exported)
    assert enc.num_thinking_steps == 2 and enc.text_format.query_template == TEMPLATE
    a = enc.encode_documents(DOCS, **ENC)
    b = unmerged.encode_documents(DOCS, **ENC)
    assert _cos(a, b).min() > 0.9999


def test_cli_bfloat16_from_hf_dir_and_refusals(src_dir, tmp_path, capsys):
    out = str(tmp_path / "bf16")
    assert export_hf.main(["export_hf", f"--model={src_dir}", f"--out={out}", "--num_thinking_steps=4"]) == 0
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert str(f.get_tensor("model.norm.weight").dtype) == "torch.bfloat16"
    assert json.load(open(os.path.join(out, "config.json")))["vocab_size"] > 0
    assert model_io.read_laser_meta(out)["num_thinking_steps"] == 4
    capsys.readouterr()
    assert export_hf.main(["export_hf", f"--model={src_dir}", f"--out={out}"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert export_hf.main(["export_hf", f"--model={src_dir}", f"--out={out}", "--overwrite"]) == 0
    assert export_hf.main(["export_hf", f"--model={src_dir}", f"--out={src_dir}", "--overwrite"]) == 2
    assert "model directory itself" in capsys.readouterr().err
    assert export_hf.main(["export_hf", f"--out={out}"]) == 2
    assert export_hf.main(["export_hf", f"--model={tmp_path / 'nope'}", f"--out={tmp_path / 'x'}"]) == 2
    assert "no such model" in capsys.readouterr().err
    assert export_hf.main(["export_hf", "--dtype=int8"]) == 2


def test_checkpoint_path_goes_through_load_for_inference_in_float32(lora_model, monkeypatch, tmp_path):
    """A training workdir is whatever load_for_inference understands; LoRA is merged."""
    calls = []

    def fake_load(path, dtype):
        calls.append((path, dtype))
        return lora_model

    monkeypatch.setattr(model_io, "load_for_inference", fake_load)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    out = export_hf.export_hf(str(workdir), str(tmp_path / "out"), dtype="float32")
    assert calls == [(str(workdir), "float32")]
    with safe_open(os.path.join(out, "model.safetensors"), "np") as f:
        merged = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    params, lora = lora_model.variables["params"], lora_model.variables["lora"]
    qkv = lora["layers"]["self_attn"]["lora_q_k_v"]  # q's adapter: the first rank-4 / q-width column blocks
    kernel = np.asarray(params["layers"]["self_attn"]["q_proj"]["kernel"][0])
    q_a, q_b = np.asarray(qkv["a"][0])[:, :4], np.asarray(qkv["b"][0])[:, :kernel.shape[1]]
    want = (kernel + q_a @ q_b * (8.0 / 4)).T
    np.testing.assert_allclose(merged, want, atol=1e-6)


def test_torch_formatting_matches_laser_encoder_with_chat_wrapping(tokenizer):
    fmt = TextFormat(query_template=TEMPLATE, chat_template=True)
    enc = LaserEncoder(None, None, tokenizer, fmt)
    meta = {"query_template": TEMPLATE, "chat_template": True}
    assert torch_encoder.format_texts(tokenizer, QUERIES, meta, INSTRUCTION) == enc.format_queries(QUERIES, INSTRUCTION)
    assert torch_encoder.format_texts(tokenizer, DOCS, meta) == enc.format_documents(DOCS)
    assert torch_encoder.format_texts(tokenizer, DOCS, {"query_template": TEMPLATE}) == DOCS


# ------------------------------------------------------------------ sentence-transformers
def test_sentence_transformers_loads_the_export_with_the_latent_loop(exported, unmerged):
    from sentence_transformers import SentenceTransformer

    names = set(os.listdir(exported))
    assert {"laser_st.py", "modules.json", "config_sentence_transformers.json"} <= names
    st = SentenceTransformer(exported, trust_remote_code=True, device="cpu")
    enc = LaserEncoder.from_pretrained(exported, dtype="float32")
    texts = QUERIES + DOCS
    assert _cos(st.encode(texts, batch_size=4), enc.encode(texts, **ENC)).min() >= 0.9999
    # A prompt is the query instruction (filled into the query template), documents as they are.
    long = dict(batch_size=4, max_length=64)  # templated queries are longer than 16 tokens
    q = st.encode_query(QUERIES, prompt=INSTRUCTION)
    assert _cos(q, unmerged.encode_queries(QUERIES, INSTRUCTION, **long)).min() >= 0.9999
    default_q = st.encode_query(QUERIES)
    assert _cos(default_q, enc.encode_queries(QUERIES, export_hf.DEFAULT_QUERY_INSTRUCTION, **long)).min() >= 0.9999
    d = st.encode_document(DOCS)
    assert _cos(d, enc.encode_documents(DOCS, **long)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    assert st.get_embedding_dimension() == enc.cfg.hidden_size


def test_sentence_transformers_refuses_the_export_without_trust_remote_code(exported):
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(exported, device="cpu")


def test_sentence_transformers_with_chat_wrapping(src_dir, tokenizer, tmp_path):
    from sentence_transformers import SentenceTransformer

    base = model_io.load_hf_dir(src_dir, "float32")
    chat = model_io.LoadedModel(base.cfg, base.variables, base.tokenizer,
                                TextFormat(query_template=TEMPLATE, chat_template=True), 3)
    out = export_hf.export_loaded(chat, str(tmp_path / "chat"), dtype="float32")
    st = SentenceTransformer(out, trust_remote_code=True, device="cpu")
    enc = LaserEncoder.from_pretrained(out, dtype="float32")
    opts = dict(batch_size=4, max_length=64)
    q = st.encode_query(QUERIES, prompt=INSTRUCTION)
    assert _cos(q, enc.encode_queries(QUERIES, INSTRUCTION, **opts)).min() >= 0.9999
    assert _cos(st.encode_document(DOCS), enc.encode_documents(DOCS, **opts)).min() >= 0.9999
