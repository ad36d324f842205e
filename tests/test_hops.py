"""The entity-hops task (laser_jax/data/tasks/hops*.py): one token per entity, held-out
compositions of seen facts, near-miss negatives, determinism, formats, an external tokenizer."""
import filecmp
import json
import os
import re

import pytest
from transformers import AutoTokenizer

from laser_jax.data import bpe, synthetic
from laser_jax.data.tasks import hops_text, parse_options
from laser_jax.data.tasks.hops_world import Chain, World, is_valid, states

SMALL = dict(task="hops", num_entities=20, num_relations=3, n_train=400, n_eval_per_domain=20,
             n_dev_per_domain=15, vocab_size=600)
THINK_SUFFIX = "<think>\n\n</think>\n\n"


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def _load(p):
    meta = json.load(open(p["meta"]))
    facts = _jsonl(os.path.join(os.path.dirname(p["meta"]), "facts.jsonl"))
    names, rels = meta["entities"], meta["relations"]
    table = [[0] * len(names) for _ in rels]
    for f in facts:
        table[rels.index(f["relation"])][names.index(f["subject"])] = names.index(f["object"])
    splits = {}
    for split in ("eval", "dev"):
        splits[split] = {d: {k: _jsonl(os.path.join(p[split], d, k + ".jsonl")) for k in ("queries", "reasoning", "chains")}
                         for d in meta[f"{split}_domains" if split == "dev" else "domains"]}
    return {"paths": p, "meta": meta, "facts": facts, "world": World(tuple(names), tuple(rels), tuple(map(tuple, table))),
            "train": _jsonl(p["train"]), "train_chains": _jsonl(p["train_chains"]), "corpus": _jsonl(p["corpus"]),
            **splits}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hops")


@pytest.fixture(scope="module")
def weights(root):
    return _load(synthetic.generate(str(root / "weights"), seed=2, **SMALL))


@pytest.fixture(scope="module")
def query(root):
    return _load(synthetic.generate(str(root / "query"), seed=2, facts="query", n_query_facts=6,
                                    reasoning_format="sentences", query_style="chain", **SMALL))


def _chains_of_texts(d, key="query"):
    return [hops_text.parse_query(r[key], d["world"]) for r in d["train"]]


def test_each_entity_name_is_one_token_wherever_it_is_written(weights):
    tok = AutoTokenizer.from_pretrained(weights["paths"]["tokenizer"])
    names = weights["meta"]["entities"]
    ids = {}
    for name in names:
        assert len(name) >= 4 and name.lower() not in hops_text.fixed_words()
        one = tok.encode(" " + name, add_special_tokens=False)
        assert len(one) == 1, name
        ids[name] = one[0]
    assert len(set(ids.values())) == len(names)
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1
    pattern = re.compile(weights["meta"]["answer"]["pattern"])
    texts = [r["query"] + r["reasoning_query"] for r in weights["train"][:100]]
    texts += [d["content"] for d in weights["corpus"]] + [f["content"] for f in weights["facts"]]
    for text in texts:  # every name written in the task's texts is its one token
        encoded, found = tok.encode(text, add_special_tokens=False), pattern.findall(text)
        assert found and sum(encoded.count(i) for i in ids.values()) == len(found)
        assert all(encoded.count(ids[name]) == found.count(name) for name in found)


def test_eval_and_dev_compositions_are_unseen_while_every_fact_they_use_is_taught(weights, query):
    for d in (weights, query):
        world = d["world"]
        train = set(_chains_of_texts(d))
        assert train == {Chain(world.names.index(c["start"]), tuple(world.relations.index(r) for r in c["relations"]))
                         for c in d["train_chains"]}
        taught = {(c.rels[i], ([c.start] + states(c, world))[i]) for c in train for i in range(len(c.rels))}
        assert len(taught) == len(world.names) * len(world.relations) == d["meta"]["facts"]["total"]
        held = []
        for split in ("eval", "dev"):
            for dom in d[split].values():
                chains = [hops_text.parse_query(q["query"], world) for q in dom["queries"]]
                assert [[world.names[x] for x in states(c, world)] for c in chains] == [c["states"] for c in dom["chains"]]
                held += chains
        assert len(set(held)) == len(held) and not set(held) & train and all(is_valid(c, world) for c in held)
        assert d["meta"]["facts"]["held_out_not_in_train_queries"] == 0
    lm_texts = [r["content"] for r in _jsonl(weights["paths"]["lm_corpus"])]  # facts=weights: in the LM's texts
    assert weights["paths"]["lm_corpus"].endswith("lm_corpus.jsonl") and query["paths"]["lm_corpus"] == query["paths"]["corpus"]
    assert set(f["content"] for f in weights["facts"]) <= set(lm_texts)
    assert set(d["content"] for d in weights["corpus"]) <= set(lm_texts)


def test_queries_name_the_start_never_the_answer_and_list_the_facts_asked(weights, query):
    for d in (weights, query):
        world, k = d["world"], d["meta"]["options"]["n_query_facts"]
        for r, c in zip(d["train"], d["train_chains"]):
            question = r["query"].split(". ")[-1] if r["query"].startswith("Facts:") else r["query"]
            assert re.findall(d["meta"]["answer"]["pattern"], question) == [c["start"]]
            if d is query:
                listed = r["query"][len("Facts: "):r["query"].index(". ")].split("; ")
                chain = hops_text.parse_query(r["query"], world)
                before = [chain.start] + states(chain, world)
                needed = [hops_text.fact_clause(world, rel, a) for rel, a in zip(chain.rels, before)]
                assert len(listed) == len(set(listed)) == k and set(needed) <= set(listed)
                assert set(listed) <= {f["content"][0].lower() + f["content"][1:-1] for f in d["facts"]}


def test_reasoning_names_one_entity_per_segment_aligned_with_the_split_rule(weights, query):
    for d in (weights, query):
        tok = AutoTokenizer.from_pretrained(d["paths"]["tokenizer"])
        split = tok.encode("\n\n", add_special_tokens=False)[-1]
        template, instr = d["meta"]["query_template"], d["train"][0]["prompt"]
        for r, c in list(zip(d["train"], d["train_chains"]))[:150]:
            segs = r["reasoning_query"].split("\n\n")
            assert len(segs) == len(c["states"]) and all(s.endswith(" " + x) for s, x in zip(segs, c["states"]))
            if d is weights:  # pairs: " teacher Cato"
                assert segs == [f" {rel} {x}" for rel, x in zip(c["relations"], c["states"])]
            q = template.format(instruction=instr, query=r["query"])
            for text in (q, tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                    add_generation_prompt=True) + THINK_SUFFIX):
                q_ids = tok.encode(text, add_special_tokens=False)
                e_ids = tok.encode(text + r["reasoning_query"], add_special_tokens=False)
                assert e_ids[:len(q_ids)] == q_ids  # the query's tokens prefix the explicit text's
                assert e_ids[len(q_ids):].count(split) == len(segs) - 1
    pairs = weights["meta"]["token_lengths"]["reasoning_per_step"]  # the default format
    assert pairs["max"] == 2.75 and 2 < pairs["mean"] < 2.75  # a relation, a name, then "\n\n" but after the last
    assert query["meta"]["token_lengths"]["reasoning_per_step"]["mean"] > 5  # " the rival of Alba is Cato"


def test_hard_negatives_are_one_wrong_hop_away(weights):
    world = weights["world"]
    entity_of = {d["content"]: d["entity"] for d in weights["corpus"]}
    for r, c in zip(weights["train"], weights["train_chains"]):
        chain = hops_text.parse_query(r["query"], world)
        end = world.names[states(chain, world)[-1]]
        assert {entity_of[p] for p in r["positive_passages"]} == {end}
        negs = [entity_of[p] for p in r["negative_passages"]]
        misses = c["near_misses"]
        assert misses and negs == [m["end"] for m in misses] + c["random_negatives"]
        assert end not in negs and len(set(negs)) == len(negs)
        for m in misses:
            rels = list(chain.rels)
            assert world.relations.index(m["relation"]) != rels[m["step"]]
            rels[m["step"]] = world.relations.index(m["relation"])
            assert world.names[states(Chain(chain.start, tuple(rels)), world)[-1]] == m["end"]


def test_every_entity_has_its_passages_and_the_world_is_made_of_permutations(weights):
    world, per = weights["world"], weights["meta"]["options"]["docs_per_entity"]
    by_entity = {}
    for d in weights["corpus"]:
        by_entity.setdefault(d["entity"], []).append(d["content"])
        assert d["content"].count(" " + d["entity"] + ",") == 1
    assert set(by_entity) == set(world.names) and all(len(set(v)) == per for v in by_entity.values())
    for rel in world.table:
        assert sorted(rel) == list(range(len(world.names)))
        assert all(rel[x] != x and rel[rel[x]] != x for x in range(len(rel)))
    for x in range(len(world.names)):
        assert len({rel[x] for rel in world.table}) == len(world.table)
    entity_of = {d["id"]: d["entity"] for d in weights["corpus"]}
    for dom in weights["eval"].values():
        for q, c in zip(dom["queries"], dom["chains"]):
            assert sorted(q["gold_ids"]) == sorted(i for i, e in entity_of.items() if e == c["states"][-1])


def test_same_bytes_for_a_seed_and_other_bytes_for_another(root, weights):
    a = os.path.dirname(weights["paths"]["meta"])
    b = os.path.dirname(synthetic.generate(str(root / "again"), seed=2, **SMALL)["meta"])
    assert _files(a) == _files(b)
    assert not filecmp.cmpfiles(a, b, _files(a), shallow=False)[1]
    other = synthetic.generate(str(root / "seed3"), seed=3, **SMALL)
    assert json.load(open(other["meta"]))["content_sha256"] != weights["meta"]["content_sha256"]


def test_names_format_is_one_token_per_hop_and_segments_two(root):
    p = synthetic.generate(str(root / "names"), seed=0, reasoning_format="names",
                           **{**SMALL, "n_dev_per_domain": 0})
    meta = json.load(open(p["meta"]))
    assert meta["token_lengths"]["reasoning_per_step"] == {"max": 1.0, "mean": 1.0}
    assert "dev" not in p and meta["dev_domains"] == []
    r = _jsonl(os.path.join(p["eval"], "steps3", "reasoning.jsonl"))[0]["reasoning"]
    assert "\n" not in r and len(r.split()) == 3
    p = synthetic.generate(str(root / "segments"), seed=0, reasoning_format="segments", **SMALL)
    meta = json.load(open(p["meta"]))
    assert meta["token_lengths"]["reasoning_per_step"]["max"] == 1.75  # a name, then "\n\n" but after the last
    c = _jsonl(os.path.join(p["eval"], "steps2", "chains.jsonl"))[0]
    r = _jsonl(os.path.join(p["eval"], "steps2", "reasoning.jsonl"))[0]["reasoning"]
    assert r == "\n\n".join(f" {x}" for x in c["states"])


def test_an_external_tokenizer_gives_its_single_token_words_as_names(tmp_path):
    words = sorted(hops_text.NAMES)[:40] + ["Mountains", "Baker"]  # task words are never names
    ext = bpe.save_tokenizer([f"hello {w} and {w}, {w}." for w in words] * 3, str(tmp_path / "ext"), vocab_size=600)
    tok = AutoTokenizer.from_pretrained(ext)
    single = [w.strip() for w in bpe.single_token_words(tok)]
    assert "Baker" not in bpe.single_token_words(tok, exclude=hops_text.fixed_words())
    p = synthetic.generate(str(tmp_path / "task"), seed=0, tokenizer=ext,
                           **{**SMALL, "num_entities": 12, "n_train": 200})
    meta = json.load(open(p["meta"]))
    assert set(meta["entities"]) <= set(single) & set(hops_text.NAMES)  # the task's own names first
    assert meta["options"]["tokenizer"] == os.path.abspath(ext)
    assert AutoTokenizer.from_pretrained(p["tokenizer"]).get_vocab() == tok.get_vocab()
    with pytest.raises(ValueError, match="fewer than num_entities=90"):
        synthetic.generate(str(tmp_path / "big"), seed=0, tokenizer=ext, **{**SMALL, "num_entities": 90})


def test_options_are_checked_and_parsed():
    assert parse_options("hops", "facts=query, num_entities=30,paraphrase=false") == {
        "facts": "query", "num_entities": 30, "paraphrase": False}
    for text, message in (("facts=brain", "facts must be one of"), ("size=3", "key one of"),
                          ("num_entities=x", "expected an integer"), ("num_relations=9", "num_relations must be")):
        with pytest.raises(ValueError, match=message):
            parse_options("hops", text)
    with pytest.raises(ValueError, match="has no option"):
        synthetic.generate("/nonexistent/never", task="arithmetic", facts="query")


def test_the_lm_reads_the_facts_only_when_they_live_in_the_weights(weights, query):
    """A causal-LM run on the generated task (data.synthetic, no data.lm_corpus) reads the
    task's LM corpus: passages + fact sentences with facts=weights, passages alone with
    facts=query (the pretraining stage passes the same file: stages.stage_config)."""
    from laser_jax.data.lm_pipeline import PASSAGE
    from laser_jax.train.config import base_config
    from laser_jax.train.lm import open_source
    from laser_jax.train.setup import DataPaths

    c = base_config()
    c.data.synthetic, c.data.chat_template = True, False
    for d, extra, name in ((weights, len(weights["facts"]), "lm_corpus.jsonl"), (query, 0, "corpus.jsonl")):
        tok = AutoTokenizer.from_pretrained(d["paths"]["tokenizer"])
        source = open_source(c, DataPaths(d["paths"]["train"], d["paths"]["tokenizer"], ""), tok)
        passages = [o for o, k in zip(source.origins, source.kinds) if k == PASSAGE]
        assert len(passages) == len(d["corpus"]) + extra and all(f"/{name}: line" in o for o in passages)
        assert len(source.rows) == len(d["train"]) + len(passages)


def test_the_run_config_names_a_bad_task_or_option():
    from laser_jax.data.errors import ConfigError
    from laser_jax.train.config import base_config, validate

    c = base_config()
    c.data.synthetic, c.model.tokenizer = True, ""
    c.data.synthetic_task, c.data.synthetic_options = "hops", "facts=query,reasoning_format=names"
    validate(c)
    c.data.synthetic_options = "facts=fridge"
    with pytest.raises(ConfigError, match="data.synthetic_options: .*facts must be one of"):
        validate(c)
    c.data.synthetic_task = "chess"
    with pytest.raises(ConfigError, match="data.synthetic_task: unknown task 'chess'"):
        validate(c)
