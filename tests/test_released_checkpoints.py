"""Issue 29: the LaSER authors' released checkpoints, encoded and evaluated as the authors did.

The model is a look-alike of `Alibaba-NLP/LaSER-Qwen3-*` (conftest.release_dir: a tiny Qwen3
safetensors directory, a ChatML chat template with <think> tokens, no laser.json). The oracle
is the authors' evaluation recipe written out here in PyTorch + transformers, independent of
laser_jax: every query and document is `apply_chat_template([user turn],
add_generation_prompt=True) + "<think>\\n\\n</think>\\n\\n"`, queries through
"Instruct: {instruction}\\nQuery: {query}"; one LEFT-padded batch (Hugging Face's default
positions, padding included, as the authors run it); K = 3 latent steps (soft token = softmax
of the logits times the input embeddings, one cached step each); the mean of the K
last-position states, L2-normalised.
"""
import inspect
import json
import os
import shutil

import numpy as np
import pytest
import torch

from laser_jax import LaserEncoder
from laser_jax.data.formatting import TextFormat
from laser_jax.data.tokenize import tokenize_texts
from laser_jax.inference import evaluate, export, load, text_format
from laser_jax.inference.mteb import LaserMtebEncoder
from laser_jax.retrieval.bright import INSTRUCTIONS

INSTRUCTION = INSTRUCTIONS["pony"]
QUERIES = ["What is 3 plus 4?", "Why is the sky blue?", "the number 12"]
DOCS = ["The number 7 is the sum of two smaller numbers.", "Cats sleep.",
        "First, take 5.\n\nThen add 4 to it\n\nSo the result is 9.\n\nDone"]
MAX_LENGTH = 128
ENC = dict(max_length=MAX_LENGTH, batch_size=4)
NOTICE = "has no laser.json"


# ------------------------------------------------------------------ the authors' recipe
def authors_text(tokenizer, text, chat=True):
    if not chat:
        return text
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)
    return wrapped + "<think>\n\n</think>\n\n"


def authors_query(tokenizer, query, chat=True):
    return authors_text(tokenizer, f"Instruct: {INSTRUCTION}\nQuery: {query}", chat)


@torch.no_grad()
def authors_embeddings(model_dir, texts, K=3):
    """One left-padded batch through transformers, K latent steps, mean, L2-normalised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # transformers >= 5.2x calls the KV cache `cache`; earlier releases `past_key_values`
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    batch = tok(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    mask = batch["attention_mask"]
    out = model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=True, output_hidden_states=True)
    states = [out.hidden_states[-1][:, -1]]
    table = model.get_input_embeddings().weight
    for _ in range(K - 1):
        soft = torch.softmax(out.logits[:, -1].float(), dim=-1) @ table
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(inputs_embeds=soft[:, None], attention_mask=mask, use_cache=True, output_hidden_states=True,
                    **{cache: out[cache]})
        states.append(out.hidden_states[-1][:, -1])
    return torch.nn.functional.normalize(torch.stack(states, 1).mean(1), dim=-1).numpy()


@pytest.fixture(scope="module")
def oracle(release_dir, tokenizer):
    """{(kind, chat): embeddings} of QUERIES and DOCS by the authors' recipe (chat) or the
    same recipe on plain texts (the spec's format, chat wrapping off)."""
    got = {}
    for chat in (True, False):
        got["query", chat] = authors_embeddings(release_dir, [authors_query(tokenizer, q, chat) for q in QUERIES])
        got["document", chat] = authors_embeddings(release_dir, [authors_text(tokenizer, d, chat) for d in DOCS])
    for kind in ("query", "document"):  # the two formats are far apart: the tests below can tell them apart
        cos = np.sum(got[kind, True] * got[kind, False], axis=1)
        assert cos.max() < 0.99, cos
    return got


def assert_same_embeddings(got, want):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos


def notices(err):
    return [line for line in err.splitlines() if NOTICE in line]


# ---------------------------------------------------------------------------- the tests
def test_formatted_token_ids_are_the_authors(release_dir, tokenizer, capsys):
    enc = LaserEncoder.from_pretrained(release_dir, dtype="float32")
    q_texts = enc.format_queries(QUERIES, INSTRUCTION)
    d_texts = enc.format_documents(DOCS)
    assert q_texts[0] == (f"<|im_start|>user\nInstruct: {INSTRUCTION}\nQuery: {QUERIES[0]}<|im_end|>\n"
                          "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    for ours, theirs in ((q_texts, [authors_query(tokenizer, q) for q in QUERIES]),
                         (d_texts, [authors_text(tokenizer, d) for d in DOCS])):
        want = tokenizer(theirs, truncation=True, max_length=8192)["input_ids"]
        assert tokenize_texts(enc.tokenizer, ours, 8192) == want
    think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    assert all(i != tokenizer.unk_token_id for i in think)
    assert tokenize_texts(enc.tokenizer, d_texts, 8192)[1][-4:-1] == [think[0], tokenizer("\n\n")["input_ids"][0],
                                                                      think[1]]


def test_laser_encoder_with_no_flags_encodes_in_the_authors_format(release_dir, oracle, capsys):
    enc = LaserEncoder.from_pretrained(release_dir, dtype="float32")
    (line,) = notices(capsys.readouterr().err)
    assert "Qwen3" in line and "authors' evaluation format" in line and "chat template ON" in line
    assert "K=3" in line and "--chat_template" in line and "--query_template" in line
    assert "--num_thinking_steps" in line
    assert enc.text_format == TextFormat(chat_template=True) and enc.num_thinking_steps == 3
    assert_same_embeddings(enc.encode_queries(QUERIES, INSTRUCTION, **ENC), oracle["query", True])
    assert_same_embeddings(enc.encode_documents(DOCS, **ENC), oracle["document", True])

    plain = LaserEncoder.from_pretrained(release_dir, dtype="float32", chat_template=False)
    (line,) = notices(capsys.readouterr().err)
    assert "chat template OFF" in line and "chat_template as given" in line
    assert_same_embeddings(plain.encode_queries(QUERIES, INSTRUCTION, **ENC), oracle["query", False])
    assert_same_embeddings(plain.encode_documents(DOCS, **ENC), oracle["document", False])


def test_an_embedding_does_not_depend_on_the_padding_of_its_batch(release_dir):
    enc = LaserEncoder.from_pretrained(release_dir, dtype="float32")
    alone = enc.encode(DOCS[1:2], **ENC)  # a short text, unpadded in a batch of one width
    crowded = enc.encode(DOCS[1:2] + [" ".join(["number"] * 60)], **ENC)  # left-padded by ~60 tokens
    np.testing.assert_allclose(crowded[0], alone[0], atol=1e-5)


def write_corpus(path, texts):
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def test_export_with_no_flags_and_with_chat_template_false(release_dir, oracle, tmp_path, capsys):
    queries, docs = write_corpus(tmp_path / "q.jsonl", QUERIES), write_corpus(tmp_path / "d.jsonl", DOCS)
    common = [f"--model={release_dir}", "--max_length=128", "--batch_size=4", "--noprogress",
              "--model_dtype=float32"]
    for flags, chat in (([], True), (["--chat_template=false"], False)):
        for kind, path, extra in (("query", queries, [f"--instruction={INSTRUCTION}"]), ("document", docs, [])):
            out = tmp_path / f"{kind}{chat}.npy"
            rc = export.main(["export", *common, f"--input={path}", f"--output={out}", f"--kind={kind}",
                              *extra, *flags])
            err = capsys.readouterr().err
            assert rc == 0, err
            (line,) = notices(err)
            assert ("chat template ON" if chat else "chat template OFF") in line
            assert_same_embeddings(np.load(out), oracle[kind, chat])


def test_export_query_template_flag_takes_backslash_n_and_bad_flags_exit_2(release_dir, oracle, tmp_path, capsys,
                                                                           monkeypatch):
    queries = write_corpus(tmp_path / "q.jsonl", QUERIES)
    out = tmp_path / "q.npy"
    argv = ["export", f"--model={release_dir}", f"--input={queries}", f"--output={out}", "--kind=query",
            f"--instruction={INSTRUCTION}", "--max_length=128", "--batch_size=4", "--noprogress",
            "--model_dtype=float32"]
    # the template typed on a command line, "\n" as two characters, as the notice prints it
    assert export.main(argv + ["--query_template=Instruct: {instruction}\\nQuery: {query}",
                               "--chat_template=true", "--num_thinking_steps=3"]) == 0
    (line,) = notices(capsys.readouterr().err)
    assert "chat_template, query_template, num_thinking_steps as given" in line
    assert_same_embeddings(np.load(out), oracle["query", True])

    def no_load(*_, **__):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(LaserEncoder, "from_pretrained", no_load)
    for bad, says in (("--query_template=Query: {text}", "--query_template: query template"),
                      ("--query_template=no placeholder", "no {query} placeholder"),
                      ("--chat_template=maybe", "chat_template")):
        assert export.main(argv + [bad, "--overwrite"]) == 2
        assert says in capsys.readouterr().err


def test_evaluate_with_no_flags_and_with_chat_template_false(release_dir, oracle, tmp_path, capsys, monkeypatch):
    from test_evaluate import write_domain

    data = str(tmp_path / "bright")
    write_domain(data, "pony", [{"id": f"q{i}", "query": q, "gold_ids": [f"d{i}"]} for i, q in enumerate(QUERIES)],
                 [{"id": f"d{i}", "content": d} for i, d in enumerate(DOCS)])
    seen = []
    score = evaluate.score_embeddings
    monkeypatch.setattr(evaluate, "score_embeddings",
                        lambda domain, q, d, **kw: seen.append((q, d)) or score(domain, q, d, **kw))
    for flags, chat in (([], True), (["--chat_template=false"], False)):
        out = tmp_path / f"r{chat}.json"
        rc = evaluate.main(["evaluate", f"--model={release_dir}", f"--data={data}", f"--output={out}",
                            "--max_length=128", "--batch_size=4", "--noprogress", "--model_dtype=float32", *flags])
        err = capsys.readouterr().err
        assert rc == 0, err
        (line,) = notices(err)
        assert ("chat template ON" if chat else "chat template OFF") in line
        (q_emb, d_emb), = seen[-1:]
        assert_same_embeddings(q_emb, oracle["query", chat])
        assert_same_embeddings(d_emb, oracle["document", chat])
        summary = json.loads(out.read_text())
        assert summary["text_format"] == {"query_template": "Instruct: {instruction}\nQuery: {query}",
                                          "chat_template": chat}
        assert summary["num_thinking_steps"] == 3
    pony = os.path.join(data, "pony")
    rc = evaluate.main(["evaluate", f"--data={pony}", f"--query_embeddings={tmp_path}/q.npy",
                        f"--document_embeddings={tmp_path}/d.npy", "--chat_template=false"])
    assert rc == 2 and "--chat_template does not apply to pre-computed embeddings" in capsys.readouterr().err
    assert evaluate.main(["evaluate", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--chat_template" in helptext and "--query_template" in helptext and "--model_dtype" in helptext


def test_mteb_wrapper_encodes_in_the_authors_format(release_dir, oracle, capsys):
    model = LaserMtebEncoder(release_dir, dtype="float32", **ENC)
    assert len(notices(capsys.readouterr().err)) == 1
    metadata = type("Meta", (), {"name": "BrightRetrieval", "prompt": None})
    got = model.encode([{"text": QUERIES}], task_metadata=metadata, hf_subset="pony", prompt_type="query")
    assert_same_embeddings(got, oracle["query", True])
    got = model.encode([{"text": DOCS}], task_metadata=metadata, hf_subset="pony", prompt_type="document")
    assert_same_embeddings(got, oracle["document", True])
    plain = LaserMtebEncoder(encoder=model.encoder, chat_template=False, **ENC)  # same weights, other format
    got = plain.encode([{"text": DOCS}], task_metadata=metadata, hf_subset="pony", prompt_type="document")
    assert_same_embeddings(got, oracle["document", False])
    assert model.encoder.text_format.chat_template  # the copy did not change the original


# ------------------------------------------------------------- which format, and when said
class _Tokenizer:
    def __init__(self, chat_template):
        self.chat_template = chat_template


@pytest.mark.parametrize("family,template,origin", [
    ("qwen3", "{{ messages }}", text_format.ORIGIN_AUTHORS),
    ("qwen3", None, text_format.ORIGIN_SPEC),
    ("qwen3", "", text_format.ORIGIN_SPEC),
    ("qwen2", "{{ messages }}", text_format.ORIGIN_SPEC),
    ("llama", "{{ messages }}", text_format.ORIGIN_SPEC),
])
def test_foreign_format_is_the_authors_for_qwen3_with_a_chat_template_only(family, template, origin):
    fmt, steps, got = text_format.foreign_format(family, _Tokenizer(template))
    assert got == origin and steps == 3 and fmt.query_template == "Instruct: {instruction}\nQuery: {query}"
    assert fmt.chat_template is (origin == text_format.ORIGIN_AUTHORS)
    line = text_format.notice("/m", got, fmt, steps)
    assert "\n" not in line and "--chat_template" in line
    assert ("authors'" in line) is (origin == text_format.ORIGIN_AUTHORS)


def test_a_directory_without_a_chat_template_gets_the_spec_default_and_says_so(release_dir, tmp_path, capsys):
    plain = tmp_path / "no_template"
    shutil.copytree(release_dir, plain)
    (plain / "chat_template.jinja").unlink()
    loaded = load.load_hf_dir(str(plain), "float32")
    assert loaded.format_origin == text_format.ORIGIN_SPEC and loaded.text_format == TextFormat()
    enc = LaserEncoder.from_pretrained(str(plain), dtype="float32")
    (line,) = notices(capsys.readouterr().err)
    assert "spec's default format" in line and "chat template OFF" in line
    assert enc.text_format == TextFormat() and enc.num_thinking_steps == 3
    with pytest.raises(ValueError, match="the tokenizer has no chat template"):
        LaserEncoder.from_pretrained(str(plain), dtype="float32", chat_template=True)


def test_a_model_that_says_its_format_is_loaded_silently_and_flags_still_win(release_dir, tmp_path, capsys):
    own = tmp_path / "own"
    shutil.copytree(release_dir, own)
    load.write_laser_meta(str(own), TextFormat(query_template="Q: {query}"), 2)
    enc = LaserEncoder.from_pretrained(str(own), dtype="float32")
    assert capsys.readouterr().err == ""
    assert enc.text_format == TextFormat(query_template="Q: {query}") and enc.num_thinking_steps == 2
    enc = LaserEncoder.from_pretrained(str(own), dtype="float32", chat_template=True, num_thinking_steps=3)
    assert capsys.readouterr().err == ""
    assert enc.text_format == TextFormat(query_template="Q: {query}", chat_template=True)
    assert enc.num_thinking_steps == 3


def test_float16_on_a_cpu_is_refused_in_one_line_before_loading(release_dir, tmp_path, capsys):
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("float16 runs on accelerators")
    data = tmp_path / "none"
    rc = evaluate.main(["evaluate", f"--model={release_dir}", f"--data={data}", "--model_dtype=float16"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "float16 does not run on a CPU" in err, err
