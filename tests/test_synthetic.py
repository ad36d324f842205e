"""The generated tasks' command and API (laser_jax.data.synthetic), and the arithmetic task:
formats, determinism, hold-out, segment alignment, unchanged by its move into data/tasks/."""
import filecmp
import json
import os

import pytest

from laser_jax.data import synthetic
from laser_jax.data.errors import ConfigError
from laser_jax.data.tasks.arithmetic_chains import Chain, Op, apply_op, end_state, make_world, states, try_states
from laser_jax.data.tasks.arithmetic_docs import number_word
from laser_jax.data.tasks.arithmetic_text import SEGMENT_SEP, parse_query, reasoning_steps

SMALL = dict(n_train=600, n_eval_per_domain=40, n_dev_per_domain=30)
# content_sha256 of `generate(seed=3, **SMALL)` and of `generate(seed=1, n_train=60,
# n_eval_per_domain=5, vocab_size=400)` computed on main at b7fe8c2, before the arithmetic task
# moved into laser_jax/data/tasks/: the move changed no byte of any file but meta.json.
SMALL_SHA256 = "290fb19729aaa2e76eb2289c1fc2f5fe967df9adb8f75163eb328dcd42782c31"
TINY_SHA256 = "0e009c3589c181ac623943a804e67b881547fb6bd0047a5aea5d8a0385c589cb"
THINK_SUFFIX = "<think>\n\n</think>\n\n"


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return str(root), synthetic.generate(str(root / "a"), seed=3, **SMALL)


@pytest.fixture(scope="module")
def data(gen):
    _, p = gen
    meta = json.load(open(p["meta"]))
    corpus = _jsonl(p["corpus"])
    domains = json.load(open(p["domains"]))
    return {
        "paths": p, "meta": meta, "world": _world(meta["options"]), "size": meta["options"]["size"],
        "train": _jsonl(p["train"]), "train_chains": _jsonl(p["train_chains"]),
        "corpus": corpus, "number_of": {d["content"]: d["number"] for d in corpus},
        "domains": domains,
        "eval": {d: {f: _jsonl(os.path.join(p["eval"], d, f + ".jsonl"))
                     for f in ("queries", "documents", "reasoning", "chains")} for d in domains},
        "dev_domains": json.load(open(p["dev_domains"])),
        "dev": {d: {f: _jsonl(os.path.join(p["dev"], d, f + ".jsonl"))
                    for f in ("queries", "documents", "reasoning", "chains")} for d in domains},
    }


@pytest.fixture(scope="module")
def tok(data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(data["paths"]["tokenizer"])


def _world(o):
    return make_world(o["size"], o["wrap"], o["max_operand"], o["multiply"])


def _chain(row):
    return Chain(row["start"], tuple(Op(k, v) for k, v in row["ops"]))


def test_the_arithmetic_task_is_unchanged_by_its_move(gen):
    _, p = gen
    meta = json.load(open(p["meta"]))
    assert meta["content_sha256"] == SMALL_SHA256 == synthetic.content_hash(os.path.dirname(p["meta"]))
    assert meta["task"] == "arithmetic" and meta["answer"]["kind"] == "number" and meta["lm_corpus"] == "corpus.jsonl"
    assert p["lm_corpus"] == p["corpus"]


def test_deterministic_for_a_seed_and_different_across_seeds(gen):
    root, p = gen
    again = synthetic.generate(os.path.join(root, "b"), seed=3, **SMALL)["meta"]
    a, b = os.path.dirname(p["meta"]), os.path.dirname(again)
    assert _files(a) == _files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, _files(a), shallow=False)
    assert not mismatch and not errors
    other = synthetic.generate(os.path.join(root, "c"), seed=4, **SMALL)
    assert open(other["train"], "rb").read() != open(p["train"], "rb").read()
    assert json.load(open(other["meta"]))["content_sha256"] != json.load(open(p["meta"]))["content_sha256"]


def test_train_records_are_reasonemb(data):
    assert len(data["train"]) == SMALL["n_train"] == len(data["train_chains"])
    assert {len(c["ops"]) for c in data["train_chains"]} == {1, 2, 3, 4}  # train_min_steps=1
    for r in data["train"]:
        assert set(r) == {"query", "prompt", "reasoning_query", "positive_passages", "negative_passages"}
        assert all(isinstance(r[k], str) and r[k] for k in ("query", "prompt", "reasoning_query"))
        assert len(r["positive_passages"]) >= 1 and len(r["negative_passages"]) >= 1
        assert all(isinstance(x, str) for x in r["positive_passages"] + r["negative_passages"])


def test_eval_is_bright_format(data):
    doc_ids = {d["id"] for d in data["corpus"]}
    assert set(data["domains"]) == set(data["meta"]["domains"]) == {"steps2", "steps3", "steps4"}
    for name, dom in data["eval"].items():
        assert isinstance(data["domains"][name], str) and data["domains"][name]
        assert len(dom["queries"]) == SMALL["n_eval_per_domain"]
        assert {d["id"] for d in dom["documents"]} == doc_ids
        assert all(set(d) == {"id", "content"} for d in dom["documents"])
        for q, r, c in zip(dom["queries"], dom["reasoning"], dom["chains"]):
            assert set(q) == {"id", "query", "gold_ids", "excluded_ids"}
            assert q["id"] == r["id"] == c["id"]
            assert q["gold_ids"] and set(q["gold_ids"]) <= doc_ids and q["excluded_ids"] == []
            assert len(_chain(c).ops) == int(name[len("steps"):])
        assert len({q["id"] for q in dom["queries"]}) == len(dom["queries"])


def test_eval_chains_never_appear_in_training(data):
    """Checked from the query texts alone, not only from the sidecar files."""
    train = {parse_query(r["query"]) for r in data["train"]}
    assert train == {_chain(c) for c in data["train_chains"]}
    for dom in data["eval"].values():
        held = [parse_query(q["query"]) for q in dom["queries"]]
        assert held == [_chain(c) for c in dom["chains"]]
        assert not train & set(held)


def test_dev_split_is_bright_format_and_held_out_of_train_and_eval(data):
    """dev/ mirrors eval/ (same domains, instructions, corpus), with its own chains: none in
    training (checked from the texts) and none in the evaluation set."""
    assert data["dev_domains"] == data["domains"]
    assert data["meta"]["dev_domains"] == data["meta"]["domains"]
    train = {parse_query(r["query"]) for r in data["train"]}
    docs = {d["id"]: d["number"] for d in data["corpus"]}
    for name, dom in data["dev"].items():
        assert len(dom["queries"]) == SMALL["n_dev_per_domain"] == data["meta"]["counts"][f"dev/{name}"]
        assert dom["documents"] == data["eval"][name]["documents"]
        held = [parse_query(q["query"]) for q in dom["queries"]]
        assert held == [_chain(c) for c in dom["chains"]] and len(set(held)) == len(held)
        assert not set(held) & train
        assert not set(held) & {_chain(c) for c in data["eval"][name]["chains"]}
        for q, r, c in zip(dom["queries"], dom["reasoning"], dom["chains"]):
            assert q["id"] == r["id"] == c["id"] and q["id"].startswith(f"dev-{name}-")
            assert {docs[g] for g in q["gold_ids"]} == {end_state(_chain(c), data["world"])}
            assert r["reasoning"].split(SEGMENT_SEP) == reasoning_steps(_chain(c), data["world"])
            assert len(_chain(c).ops) == int(name[len("steps"):])


def test_eval_split_does_not_depend_on_the_dev_split(gen, tmp_path):
    _, p = gen
    without = synthetic.generate(str(tmp_path / "nodev"), seed=3, **{**SMALL, "n_dev_per_domain": 0})
    assert "dev" not in without and not os.path.exists(os.path.join(os.path.dirname(without["meta"]), "dev"))
    a, b = p["eval"], without["eval"]
    assert _files(a) == _files(b)
    assert not filecmp.cmpfiles(a, b, _files(a), shallow=False)[1]


def test_texts_agree_with_the_chains(data):
    world, number_of = data["world"], data["number_of"]
    for r, c in zip(data["train"], data["train_chains"]):
        chain = parse_query(r["query"])
        assert c["states"] == states(chain, world)
        assert r["reasoning_query"].split(SEGMENT_SEP) == reasoning_steps(chain, world)
        assert {number_of[p] for p in r["positive_passages"]} == {c["states"][-1]}
    docs = {d["id"]: d["number"] for d in data["corpus"]}
    for dom in data["eval"].values():
        for q, r in zip(dom["queries"], dom["reasoning"]):
            chain = parse_query(q["query"])
            assert {docs[g] for g in q["gold_ids"]} == {end_state(chain, world)}
            assert sorted(q["gold_ids"]) == sorted(i for i, n in docs.items() if n == end_state(chain, world))
            assert r["reasoning"].split(SEGMENT_SEP) == reasoning_steps(chain, world)


def test_one_segment_per_step_and_intermediate_states_are_documents(data):
    world = data["world"]
    covered = {d["number"] for d in data["corpus"]}
    assert covered == set(range(data["size"]))
    for r in data["train"]:
        chain = parse_query(r["query"])
        segs = r["reasoning_query"].split(SEGMENT_SEP)
        assert len(segs) == len(chain.ops)
        for seg, x in zip(segs, states(chain, world)):
            assert seg.endswith(f" is {x}")  # a segment ends on the state it reaches


def test_hard_negatives_are_one_wrong_step_away(data):
    world, number_of = data["world"], data["number_of"]
    for r, c in zip(data["train"], data["train_chains"]):
        chain = parse_query(r["query"])
        end = end_state(chain, world)
        negs = [number_of[p] for p in r["negative_passages"]]
        misses = c["near_misses"]
        assert misses, "every chain gets at least one near miss"
        assert negs == [m["end"] for m in misses] + c["random_negatives"]
        assert end not in negs and len(set(negs)) == len(negs)
        for m in misses:
            wrong = list(chain.ops)
            assert Op(*m["op"]) != wrong[m["step"]]
            wrong[m["step"]] = Op(*m["op"])
            diff = [i for i, (a, b) in enumerate(zip(chain.ops, wrong)) if a != b]
            assert diff == [m["step"]]
            assert end_state(Chain(chain.start, tuple(wrong)), world) == m["end"]


def test_documents_name_their_number_and_are_distinct(data):
    contents = [d["content"] for d in data["corpus"]]
    assert len(set(contents)) == len(contents)
    for d in data["corpus"]:
        n = d["number"]
        head = d["content"].split(" ")[:3]
        assert str(n) in head or f"({n})" in head


def test_segment_ends_are_visible_to_the_split_token_rule(data, tok):
    """LaSER's rule: split id = last id of "\\n\\n"; segment ends = split ids in the
    reasoning region + its last token. Each must close exactly one reasoning step."""
    split_ids = tok.encode("\n\n", add_special_tokens=False)
    assert split_ids == data["meta"]["token_lengths"]["split_token_ids"]
    assert len(split_ids) == 1, "'\\n\\n' should be a single token"
    split = split_ids[-1]
    template = data["meta"]["query_template"]
    for r in data["train"][:200]:
        q = template.format(instruction=r["prompt"], query=r["query"])
        steps = r["reasoning_query"].split(SEGMENT_SEP)
        for query_text in (q, tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                      add_generation_prompt=True) + THINK_SUFFIX):
            q_ids = tok.encode(query_text, add_special_tokens=False)
            e_ids = tok.encode(query_text + r["reasoning_query"], add_special_tokens=False)
            assert e_ids[:len(q_ids)] == q_ids, "the query's tokens must prefix the explicit text's"
            region = e_ids[len(q_ids):]
            ends = [i for i, t in enumerate(region) if t == split]
            assert len(ends) == len(steps) - 1
            ends.append(len(region) - 1)
            for i, pos in enumerate(ends):
                closed = SEGMENT_SEP.join(steps[:i + 1]) + (SEGMENT_SEP if i < len(steps) - 1 else "")
                assert tok.decode(region[:pos + 1]) == closed


def test_punctuation_newline_merge_is_avoided(tok):
    """Steps end on a digit: "5\\n\\n" keeps "\\n\\n" apart (and this tokenizer, never shown
    ".\\n\\n", keeps it apart too); Qwen's own vocabulary would merge ".\\n\\n"."""
    split = tok.encode("\n\n", add_special_tokens=False)[-1]
    assert tok.encode("3 is 5\n\n5 plus", add_special_tokens=False).count(split) == 1
    assert tok.encode(".\n\n", add_special_tokens=False)[-1] == split


def test_token_lengths_are_short(data, tok):
    lengths = data["meta"]["token_lengths"]
    assert lengths["query"]["max"] <= 64
    assert lengths["document"]["max"] <= 40
    assert lengths["explicit"]["max"] <= 110
    r = data["train"][0]
    measured = len(tok.encode(data["meta"]["query_template"].format(instruction=r["prompt"], query=r["query"]),
                              add_special_tokens=False))
    assert measured <= lengths["query"]["max"]


def test_ensure_generated_reuses_and_regenerates(tmp_path):
    out = str(tmp_path / "task")
    opts = dict(n_train=60, n_eval_per_domain=5, vocab_size=400)
    p = synthetic.ensure_generated(out, seed=1, **opts)
    assert json.load(open(p["meta"]))["content_sha256"] == TINY_SHA256
    stamp = os.stat(p["train"]).st_mtime_ns
    assert synthetic.ensure_generated(out, seed=1, **opts) == p
    assert os.stat(p["train"]).st_mtime_ns == stamp
    p2 = synthetic.ensure_generated(out, seed=1, **{**opts, "n_train": 70})
    assert len(_jsonl(p2["train"])) == 70
    with open(p2["train"], "a") as f:
        f.write("\n")
    assert not synthetic.is_current(out, seed=1, **{**opts, "n_train": 70})
    synthetic.ensure_generated(out, seed=1, **{**opts, "n_train": 70})
    assert synthetic.is_current(out, seed=1, **{**opts, "n_train": 70})
    # generations from before the task field (no "task" in meta.json) are the arithmetic task's
    meta = json.load(open(p2["meta"]))
    del meta["task"]
    json.dump(meta, open(p2["meta"], "w"))
    assert synthetic.is_current(out, seed=1, **{**opts, "n_train": 70})
    assert not synthetic.is_current(out, seed=1, task="hops")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        synthetic.generate(str(foreign), seed=0, **opts)


def test_command_line(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert synthetic.main(["synthetic", f"--out={out}", "--seed=5", "--n_train=30", "--n_eval_per_domain=4",
                           "--n_dev_per_domain=2", "--min_steps=3", "--max_steps=3", "--paraphrase=false"]) == 0
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["seed"] == 5 and meta["options"]["paraphrase"] is False
    assert meta["counts"] == {"train": 30, "documents": 150, "eval/steps3": 4, "dev/steps3": 2}
    assert json.loads(capsys.readouterr().out)["counts"] == meta["counts"]


def test_the_task_flag_and_its_options(tmp_path, capsys, caplog):
    """--task picks the task; an option of another task is a usage error naming it; a
    directory of another task is regenerated, and the log says what it replaced."""
    out = str(tmp_path / "hops")
    args = ["synthetic", f"--out={out}", "--task=hops", "--num_entities=12", "--num_relations=2", "--n_train=60",
            "--n_eval_per_domain=4", "--n_dev_per_domain=0", "--facts=query", "--n_query_facts=5"]
    assert synthetic.main(args) == 0
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["task"] == "hops" and meta["options"]["facts"] == "query" and meta["options"]["num_entities"] == 12
    assert json.loads(capsys.readouterr().out)["counts"] == meta["counts"]
    assert synthetic.main(["synthetic", f"--out={out}", "--facts=query"]) == 2
    err = capsys.readouterr().err
    assert "--facts: not an option of the arithmetic task" in err and "max_operand" in err
    assert synthetic.main(["synthetic", f"--out={out}", "--task=hops", "--facts=brain"]) == 2
    assert "facts must be one of" in capsys.readouterr().err
    with caplog.at_level("WARNING", logger="laser_jax"):
        p = synthetic.ensure_generated(out, seed=0, n_train=30, n_eval_per_domain=3, vocab_size=400)
    assert json.load(open(p["meta"]))["task"] == "arithmetic"
    assert "holds the hops task" in caplog.text and "generating the arithmetic task" in caplog.text


def test_config_args_name_the_bad_field():
    import ml_collections

    d = ml_collections.ConfigDict({"synthetic_seed": 4, "synthetic_task": "hops", "synthetic_options": "facts=query"})
    assert synthetic.config_args(d) == {"seed": 4, "task": "hops", "facts": "query"}
    d.synthetic_options = "size=3"
    with pytest.raises(ConfigError, match="data.synthetic_options: .*size=3"):
        synthetic.config_args(d)
    d.synthetic_task = "chess"
    with pytest.raises(ConfigError, match="data.synthetic_task: unknown task 'chess'"):
        synthetic.config_args(d)


def test_number_words():
    assert [number_word(n) for n in (0, 13, 40, 42, 999)] == [
        "zero", "thirteen", "forty", "forty-two", "nine hundred and ninety-nine"]


def test_chain_arithmetic():
    line, wheel = make_world(50, False, 5), make_world(17, True, 5)
    assert apply_op(16, Op("add", 3), wheel) == 2 and apply_op(16, Op("add", 3), line) == 19
    assert apply_op(1, Op("sub", 4), wheel) == 14 and apply_op(1, Op("sub", 4), line) is None
    assert apply_op(30, Op("mul", 2), line) is None
    chain = Chain(7, (Op("add", 3), Op("mul", 2), Op("sub", 4)))
    assert states(chain, line) == [10, 20, 16] and states(chain, wheel) == [10, 3, 16]
    assert reasoning_steps(chain, line) == ["7 plus 3 is 10", "10 doubled is 20", "20 minus 4 is 16"]
    assert try_states(Chain(40, (Op("mul", 2),)), line) is None


def test_wrapping_world(tmp_path):
    p = synthetic.generate(str(tmp_path / "wheel"), seed=0, size=17, wrap=True, n_train=200,
                           n_eval_per_domain=10, vocab_size=400)
    world = make_world(17, True, 5)
    assert "modulo 17" in json.load(open(p["domains"]))["steps3"]
    number_of = {d["content"]: d["number"] for d in _jsonl(p["corpus"])}
    for r in _jsonl(p["train"]):
        chain = parse_query(r["query"])
        assert r["reasoning_query"].split(SEGMENT_SEP) == reasoning_steps(chain, world)
        assert {number_of[x] for x in r["positive_passages"]} == {end_state(chain, world)}


def test_same_bytes_from_a_fresh_process(gen, tmp_path):
    """Tokenizer training hashes in Rust; a new process must still write the same files."""
    import subprocess
    import sys

    _, p = gen
    out = str(tmp_path / "fresh")
    args = [f"--{k}={v}" for k, v in SMALL.items()]
    subprocess.run([sys.executable, "-m", "laser_jax.data.synthetic", f"--out={out}", "--seed=3", *args],
                   check=True, capture_output=True)
    a = os.path.dirname(p["meta"])
    assert _files(a) == _files(out)
    assert not filecmp.cmpfiles(a, out, _files(a), shallow=False)[1]


@pytest.mark.parametrize("variant", ["", ":hops", ":hops_query"])
def test_tiny_config_lengths_are_exactly_the_task_s_longest_texts(tmp_path, variant):
    """configs/tiny.py (and its task variants) truncates nothing of the task it generates,
    and pads no further than its longest text (on CPU every padded position costs as much as
    a real one); its vocabulary holds the task's tokenizer."""
    from laser_jax.experiments.ablate import load_config, resolve_config_path

    c = load_config(resolve_config_path("configs/tiny.py" + variant))
    p = synthetic.generate(str(tmp_path / "task"), **synthetic.config_args(c.data))
    meta = json.load(open(p["meta"]))
    lengths = meta["token_lengths"]
    assert meta["task"] == (variant.strip(":").split("_")[0] or "arithmetic")
    assert c.data.pad_multiple == 1 and tuple(c.data.bucket_fractions) == (1.0,)
    assert (c.data.query_max_len, c.data.doc_max_len, c.data.explicit_max_len) == (
        lengths["query"]["max"], lengths["document"]["max"], lengths["explicit"]["max"])
    assert c.eval.max_length >= max(lengths["query"]["max"], lengths["document"]["max"])
    assert lengths["vocab_size"] <= c.model.vocab_size
