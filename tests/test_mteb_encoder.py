"""LaserMtebEncoder's mteb protocol, with fake batches and task metadata (mteb not needed)."""
import enum
import sys
import types

import numpy as np
import pytest
import torch

from hf_models import build_hf_model
from laser_jax.inference.encoder import LaserEncoder
from laser_jax.inference.mteb import DEFAULT_INSTRUCTION, LaserMtebEncoder, bright_domain
from laser_jax.retrieval.bright import INSTRUCTIONS

OPTS = dict(max_length=32, batch_size=8)
QUERIES = ["How do cells divide?", "What is 3 plus 4?", "Why is the sky blue?", "the number 12"]
# Long enough (> 16 tokens) that every batch is 32 wide: one compiled shape per K.
DOCS = ["The number 7 is the sum of two smaller numbers. Many documents describe numbers; some describe cats.",
        "First, take 5.\n\nThen add 4 to it\n\nSo the result is 9.\n\nDone",
        "The number 40 is the sum of two smaller numbers. Some describe cats, others describe the weather."]


class PromptType(str, enum.Enum):
    """Stands in for mteb.types.PromptType (a str enum with the same values)."""
    query = "query"
    document = "document"


def task(name, prompt=None):
    return types.SimpleNamespace(name=name, prompt=prompt, type="Retrieval")


def loader(texts, batch=3):
    """What mteb's DataLoader yields for text: dicts with a "text" list (plus other columns)."""
    return [{"text": texts[i:i + batch], "id": list(range(i, i + batch))} for i in range(0, len(texts), batch)]


@pytest.fixture(scope="module")
def encoder(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    # the spec's plain format (a Qwen3 directory without laser.json would otherwise get the
    # LaSER authors' chat format: tests/test_released_checkpoints.py)
    return LaserEncoder.from_pretrained(path, dtype="float32", chat_template=False)


@pytest.fixture(scope="module")
def model(encoder):
    assert min(len(ids) for ids in encoder.tokenizer(DOCS)["input_ids"]) > 16
    return LaserMtebEncoder("org/laser-test", encoder=encoder, **OPTS)


@pytest.mark.parametrize("name,subset,domain", [
    ("BrightRetrieval", "biology", "biology"),
    ("BrightLongRetrieval", "pony", "pony"),
    ("BrightRetrieval", "theoremqa_questions", "theoremqa_questions"),
    ("BrightEarthScienceRetrieval", "default", "earth_science"),
    ("BrightSustainableLivingLongRetrieval", None, "sustainable_living"),
    ("BrightTheoremQATheoremsRetrieval", "default", "theoremqa_theorems"),
    ("BrightProAopsRetrieval", "default", "aops"),
    ("BrightStackoverflowRetrieval", "default", "stackoverflow"),
    ("BrightRetrieval", "unknown", None),
    ("NFCorpus", "biology", None),
])
def test_bright_domain_from_subset_or_task_name(name, subset, domain):
    assert bright_domain(name, subset) == domain


def test_bright_queries_use_the_domain_instruction_in_the_query_template(model, encoder):
    for prompt_type in (PromptType.query, "query"):
        got = model.encode(loader(QUERIES), task_metadata=task("BrightRetrieval"), hf_split="standard",
                           hf_subset="economics", prompt_type=prompt_type)
        want = encoder.encode_queries(QUERIES, INSTRUCTIONS["economics"], num_thinking_steps=3, **OPTS)
        assert got.dtype == np.float32 and got.shape == (len(QUERIES), encoder.cfg.hidden_size)
        np.testing.assert_allclose(got, want, atol=1e-6)
    one_domain = model.encode(loader(QUERIES), task_metadata=task("BrightEconomicsRetrieval"),
                              hf_split="standard", hf_subset="default", prompt_type=PromptType.query)
    np.testing.assert_allclose(one_domain, want, atol=1e-6)


def test_documents_are_not_formatted(model, encoder):
    got = model.encode(loader(DOCS, batch=2), task_metadata=task("BrightRetrieval"), hf_split="standard",
                       hf_subset="biology", prompt_type=PromptType.document, batch_size=64)
    np.testing.assert_allclose(got, encoder.encode(DOCS, **OPTS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_num_thinking_steps_is_configurable(encoder):
    k1 = LaserMtebEncoder(encoder=encoder, num_thinking_steps=1, **OPTS)
    got = k1.encode(loader(DOCS), task_metadata=task("X"), prompt_type="document")
    np.testing.assert_allclose(got, encoder.encode(DOCS, num_thinking_steps=1, **OPTS), atol=1e-6)
    assert np.abs(got - encoder.encode(DOCS, num_thinking_steps=3, **OPTS)).max() > 1e-3
    with pytest.raises(ValueError, match="num_thinking_steps must be >= 1"):
        LaserMtebEncoder(encoder=encoder, num_thinking_steps=-1)


def test_instruction_order_overrides_bright_task_prompt_default(encoder):
    model = LaserMtebEncoder(encoder=encoder, instructions={"biology": "B!", "MyTask": "M!"})
    assert model.query_instruction(task("BrightRetrieval"), "biology") == "B!"
    assert model.query_instruction(task("BrightBiologyRetrieval"), "default") == "B!"
    assert model.query_instruction(task("BrightRetrieval"), "pony") == INSTRUCTIONS["pony"]
    assert model.query_instruction(task("MyTask", "ignored"), "default") == "M!"
    assert model.query_instruction(task("Other", "Retrieve answers: "), "default") == "Retrieve answers:"
    assert model.query_instruction(task("Other", {"query": "Q?", "document": "D?"}), "default") == "Q?"
    assert model.query_instruction(task("Other", {"document": "D?"}), "default") == DEFAULT_INSTRUCTION
    assert model.query_instruction(task("Other"), "default") == DEFAULT_INSTRUCTION


def test_inputs_without_prompt_type_are_encoded_as_queries(model, encoder):
    got = model.encode(loader(DOCS), task_metadata=task("SomeSTS", "Retrieve similar text"), hf_split="test",
                       hf_subset="default", prompt_type=None)
    np.testing.assert_allclose(got, encoder.encode_queries(DOCS, "Retrieve similar text", **OPTS), atol=1e-6)


def test_similarity_is_cosine_for_numpy_and_torch(model):
    rng = np.random.RandomState(0)
    a, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(model.similarity(a, torch.from_numpy(b)), an @ bn.T, atol=1e-6)
    np.testing.assert_allclose(model.similarity(a[0], b), (an[:1] @ bn.T), atol=1e-6)
    np.testing.assert_allclose(model.similarity_pairwise(a, b[:3]), np.sum(an * bn[:3], axis=1), atol=1e-6)


def test_protocol_errors_and_empty_input(model, encoder):
    with pytest.raises(ValueError, match="text only"):
        model.encode([{"image": [None]}], task_metadata=task("X"), hf_split="", hf_subset="", prompt_type="query")
    with pytest.raises(ValueError, match="unknown prompt_type"):
        model.encode(loader(DOCS), task_metadata=task("X"), hf_split="", hf_subset="", prompt_type="passage")
    empty = model.encode([], task_metadata=task("X"), hf_split="", hf_subset="", prompt_type="query")
    assert empty.shape == (0, encoder.cfg.hidden_size)
    with pytest.raises(ValueError, match="model_name"):
        LaserMtebEncoder()


def test_model_name_loads_through_laser_encoder(encoder, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(LaserEncoder, "from_pretrained",
                        classmethod(lambda cls, path, dtype=None: calls.append((path, dtype)) or encoder))
    model = LaserMtebEncoder(str(tmp_path), "rev1", device="cuda", dtype="bfloat16")
    assert calls == [(str(tmp_path), "bfloat16")] and model.encoder is encoder
    assert model.model_name == f"laser_jax/{tmp_path.name}" and model.num_thinking_steps == 3


def test_model_meta_needs_mteb(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)
    monkeypatch.setitem(sys.modules, "mteb.models", None)
    monkeypatch.setitem(sys.modules, "mteb.models.model_meta", None)
    fresh = LaserMtebEncoder(encoder=model.encoder)
    with pytest.raises(ImportError, match="pip install mteb"):
        fresh.mteb_model_meta


def test_mteb_batch_size_and_progress_bar_are_honoured(model, encoder, capsys):
    encoder.batch_shapes.clear()
    got = model.encode(loader(DOCS), task_metadata=task("X"), prompt_type="document", batch_size=2,
                       show_progress_bar=True)
    assert {rows for rows, _ in encoder.batch_shapes} == {2}
    assert "3/3" in capsys.readouterr().err
    np.testing.assert_allclose(got, encoder.encode(DOCS, **OPTS), atol=1e-6)
    encoder.batch_shapes.clear()
    model.encode(loader(DOCS), task_metadata=task("X"), prompt_type="document")
    assert {rows for rows, _ in encoder.batch_shapes} == {OPTS["batch_size"]}
    assert capsys.readouterr().err == ""
