"""laser_jax.experiments.thoughts: the soft steps' top tokens of a tiny random model."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.data.tokenize import tokenize_texts
from laser_jax.experiments import thoughts
from laser_jax.model.decoder import Decoder, positions_from_mask
from tiny_models import tiny_loaded

TEXTS = ["Instruct: Given a question, retrieve passages that answer it.\nQuery: What is 3 plus 4?",
         "Query: What is 11 plus 2?"]


def test_step_zero_is_the_lm_head_at_the_prompts_last_state(tokenizer):
    loaded = tiny_loaded(tokenizer, seed=4, scale=2.0, steps=3)
    out = thoughts.think(loaded, TEXTS, top_k=4)
    model = Decoder(loaded.cfg)
    last_logits = jax.jit(lambda v, ids, m: model.apply(v, ids, positions_BT=positions_from_mask(m), kv_mask_BS=m,
                                                        logits="last").logits[0, -1])
    for text, steps in zip(TEXTS, out):
        assert len(steps) == 2 and all(len(top) == 4 for top in steps)  # K-1 soft steps
        ids = jnp.asarray(tokenize_texts(tokenizer, [text], 512))  # alone, no padding
        logits = last_logits(loaded.variables, ids, jnp.ones_like(ids))
        assert steps[0][0][1] == int(jnp.argmax(logits))
        assert steps[0][0][0] == tokenizer.decode([steps[0][0][1]])
        p = np.asarray(jnp.exp(logits - jnp.max(logits)) / jnp.sum(jnp.exp(logits - jnp.max(logits))))
        np.testing.assert_allclose([q for _, _, q in steps[0]], np.sort(p)[::-1][:4], rtol=1e-4)
        for top in steps:
            probs = [q for _, _, q in top]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert thoughts.think(loaded, TEXTS, num_steps=1) == [[], []]


def test_thoughts_command_on_a_domain_and_on_a_query(tokenizer, tmp_path, capsys):
    from laser_jax.model.hf_io import save_pretrained

    loaded = tiny_loaded(tokenizer, seed=4)
    model_dir = save_pretrained(str(tmp_path / "m"), loaded.variables["params"], loaded.cfg, tokenizer,
                                dtype="float32")
    dom = tmp_path / "steps2"
    dom.mkdir()
    (dom / "documents.jsonl").write_text(json.dumps({"id": "d1", "content": "The number 7."}) + "\n")
    (dom / "queries.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "query": f"What is {i} plus 4?",
                                                           "gold_ids": ["d1"]}) + "\n" for i in range(3)))
    (dom / "instruction.txt").write_text("Given a question, retrieve passages that answer it.")
    (dom / "reasoning.jsonl").write_text(json.dumps({"id": "q0", "reasoning": "First, take 0.\n\nThen add 4"}) + "\n")
    out = str(tmp_path / "t.md")
    assert thoughts.main(["thoughts", f"--model={model_dir}", f"--data={dom}", "--num_queries=2", "--top_k=3",
                          f"--output={out}"]) == 0
    md = open(out).read()
    assert md.strip() == capsys.readouterr().out.strip()
    assert "## Query q0" in md and "## Query q1" in md and "## Query q2" not in md
    assert md.count("| 0 |") == 2 and md.count("| 1 |") == 2 and "| 2 |" not in md  # K=3: two soft steps
    assert md.count("Gold reasoning:") == 1 and "Then add 4" in md
    assert "Query: What is 1 plus 4?" in md
    assert thoughts.main(["thoughts", f"--model={model_dir}", "--query=What is 5 plus 1?",
                          "--num_thinking_steps=2"]) == 0
    text = capsys.readouterr().out
    assert "## Query 0" in text and "| 0 |" in text and "| 1 |" not in text
    assert thoughts.main(["thoughts", f"--model={model_dir}"]) == 2


def _split_with_chains(root):
    """A generated-task-like split: two domains, chains with their states."""
    (root / "domains.json").write_text(json.dumps({"steps2": "Find the number.", "steps3": "Find the number."}))
    rows = {"steps2": [("a", [24, 20]), ("b", [25, 30])], "steps3": [("c", [10, 12, 7])]}
    for dom, items in rows.items():
        d = root / dom
        d.mkdir()
        for name, row in (("queries", lambda i, st: {"id": i, "query": f"Query {i}.", "gold_ids": ["d1"]}),
                          ("chains", lambda i, st: {"id": i, "states": st})):
            d.joinpath(f"{name}.jsonl").write_text("".join(json.dumps(row(i, st)) + "\n" for i, st in items))
        d.joinpath("documents.jsonl").write_text(json.dumps({"id": "d1", "content": "The number 7."}) + "\n")
    return str(root)


def test_the_figure_counts_soft_steps_that_land_on_their_hop(tokenizer, tmp_path, monkeypatch):
    """Per soft step j: queries with >= j steps, top-1 = the hop-j state's first token, in the
    top-k, and top-1 = hop i for every i (hand-made tops; the states' first tokens are digits)."""
    assert thoughts.state_token(tokenizer, 24) == "2" and thoughts.state_token(tokenizer, 7) == "7"
    split = _split_with_chains(tmp_path)
    tops = {"a": [["2", "x"], ["2", "x"]], "b": [["9", "2"], ["3", "x"]], "c": [["1", "x"], ["7", "1"]]}

    def fake_think(loaded, texts, **kw):
        return [[[(" " + t, 0, 0.5) for t in step] for step in tops[text.rsplit(" ", 1)[-1][0]]] for text in texts]

    monkeypatch.setattr(thoughts, "think", fake_think)
    fig = thoughts.hop_figure(tiny_loaded(tokenizer, steps=3), split, batch_size=2, top_k=2)
    assert fig["n"] == 3 and fig["K"] == 3 and [s["step"] for s in fig["steps"]] == [1, 2]
    s1, s2 = fig["steps"]
    assert (s1["n"], s1["top1"], s1["topk"]) == (3, round(2 / 3, 4), 1.0)
    assert s1["top1_is_hop"] == [round(2 / 3, 4), round(2 / 3, 4), 0.0]  # "2" is also 20's first token
    assert (s2["n"], s2["top1"], s2["topk"]) == (3, round(2 / 3, 4), 1.0)
    assert s2["top1_is_hop"] == [round(1 / 3, 4), round(2 / 3, 4), 1.0]
    md = thoughts.format_figure(fig)
    assert "| 1 | 3 | 66.7 | 100.0 | 66.7 | 66.7 | 0.0 |" in md
    tops = {k: v + [[{"a": "2", "b": "3", "c": "7"}[k], "x"]] for k, v in tops.items()}  # a third soft step
    s3 = thoughts.hop_figure(tiny_loaded(tokenizer, steps=4), split, top_k=2)["steps"][2]
    assert (s3["n"], s3["top1"]) == (1, 1.0)  # only query c has a third hop
    assert s3["top1_is_hop"] == [round(1 / 3, 4), round(2 / 3, 4), 1.0]  # every query with hop i counts
    only = thoughts.hop_figure(tiny_loaded(tokenizer, steps=3), os.path.join(split, "steps3"), top_k=2)
    assert only["n"] == 1 and only["steps"][0]["top1"] == 1.0


def test_the_figure_command_on_a_tiny_model(tokenizer, tmp_path, capsys):
    from laser_jax.model.hf_io import save_pretrained

    loaded = tiny_loaded(tokenizer, seed=4)
    model_dir = save_pretrained(str(tmp_path / "m"), loaded.variables["params"], loaded.cfg, tokenizer,
                                dtype="float32")
    (tmp_path / "dev").mkdir()
    split = _split_with_chains(tmp_path / "dev")
    out = str(tmp_path / "fig.md")
    assert thoughts.main(["thoughts", f"--model={model_dir}", f"--data={split}", "--figure", f"--output={out}"]) == 0
    assert open(out).read().strip() == capsys.readouterr().out.strip()
    fig = json.load(open(str(tmp_path / "fig.json")))
    assert fig["n"] == 3 and len(fig["steps"]) == 2
    assert all(0 <= s["top1"] <= s["topk"] <= 1 for s in fig["steps"])
    assert thoughts.main(["thoughts", f"--model={model_dir}", "--query=x", "--figure"]) == 2
    assert "--figure needs --data" in capsys.readouterr().err
