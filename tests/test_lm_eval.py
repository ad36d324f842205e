"""End-state accuracy of greedy reasoning (inference/reasoning.py, experiments/lm_eval.py) on hand-made cases:
the end number of the arithmetic task, the end entity of the hops task (by meta.json's answer)."""
import json

from laser_jax.data.formatting import TextFormat
from laser_jax.data.tasks import hops_text, layout as tasks_layout
from laser_jax.inference import reasoning
from laser_jax.inference.load import LoadedModel


def _write_split(root):
    doms = {"steps2": "Find the number.", "steps3": "Find the number."}
    (root / "domains.json").write_text(json.dumps(doms))
    chains = {"steps2": [("a", 21, [24, 20], "21 plus 3 is 24\n\n24 minus 4 is 20"),
                         ("b", 28, [25, 30], "28 minus 3 is 25\n\n25 plus 5 is 30")],
              "steps3": [("c", 9, [10, 12, 7], "9 plus 1 is 10\n\n10 plus 2 is 12\n\n12 minus 5 is 7")]}
    for dom, rows in chains.items():
        d = root / dom
        d.mkdir()
        d.joinpath("queries.jsonl").write_text("".join(json.dumps({"id": i, "query": f"Start with {s}."}) + "\n"
                                                       for i, s, _, _ in rows))
        d.joinpath("reasoning.jsonl").write_text("".join(json.dumps({"id": i, "reasoning": r}) + "\n"
                                                         for i, _, _, r in rows))
        d.joinpath("chains.jsonl").write_text("".join(json.dumps({"id": i, "start": s, "states": st}) + "\n"
                                                      for i, s, st, _ in rows))
    return str(root)


def test_end_number_and_score_on_a_hand_made_split(tmp_path):
    number = reasoning.answer_spec(None)
    assert reasoning.end_answer("21 plus 3 is 24\n\n24 minus 4 is 20", number) == 20
    assert reasoning.end_answer("no number", number) is None
    queries = reasoning.load_split(_write_split(tmp_path))
    assert [(q.domain, q.id, q.end_state) for q in queries] == [("steps2", "a", 20), ("steps2", "b", 30),
                                                                 ("steps3", "c", 7)]
    generated = ["21 plus 3 is 24\n\n24 minus 4 is 20",  # right and exact
                 "28 minus 3 is 25\n\n25 plus 5 is 31",  # wrong end number
                 "9 plus 1 is 10\n\n10 plus 2 is 12\n\n12 minus 5 is 7 then"]  # right end number, not exact
    r = reasoning.score(queries, generated)
    assert r["accuracy"] == 2 / 3 and r["per_domain"] == {"steps2": 0.5, "steps3": 1.0}
    assert r["exact"] == 1 / 3 and r["n"] == 3 and r["answer"] == "number"
    assert queries[2].states == (10, 12, 7)


def test_end_entity_by_the_task_s_answer_pattern(tmp_path):
    """A hops task's meta.json names its answer pattern: the last entity name decides, as a
    whole word, wherever the split sits below the task directory."""
    split = tmp_path / "eval"
    split.mkdir()
    (split / "domains.json").write_text(json.dumps({"steps2": "Find the person."}))
    d = split / "steps2"
    d.mkdir()
    rows = [("a", "Alba", ["Cato", "Dara"]), ("b", "Bren", ["Dara", "Cato"]), ("c", "Cato", ["Alba", "Bren"])]
    for name, field in (("queries", "query"), ("chains", "states")):
        d.joinpath(f"{name}.jsonl").write_text("".join(
            json.dumps({"id": i, field: (f"the rival of {s}" if field == "query" else st)}) + "\n" for i, s, st in rows))
    pattern = tasks_layout.answer_spec({"answer": {"kind": "entity", "pattern": hops_text.answer_pattern(
        ["Alba", "Bren", "Cato", "Dara"])}})
    (tmp_path / "meta.json").write_text(json.dumps({"generator": tasks_layout.GENERATOR, "answer": pattern}))
    queries = reasoning.load_split(str(split))
    assert tasks_layout.answer_spec(tasks_layout.find_meta(str(d))) == pattern
    generated = [" Cato\n\n Dara", " Dara\n\n Catoa", " the x of Cato is Bren\n\n"]
    assert [reasoning.end_answer(g, pattern) for g in generated] == ["Dara", "Dara", "Bren"]
    r = reasoning.score(queries, generated, pattern)
    assert r["accuracy"] == 2 / 3 and r["answer"] == "entity"
    assert "end-entity accuracy 66.7%" in reasoning.format_result(r)


def test_end_state_accuracy_prompts_the_explicit_prefix_and_scores(tmp_path, tokenizer, monkeypatch):
    split = _write_split(tmp_path)
    seen = {}

    def fake_generate(lm, prompts, *, max_new_tokens, batch_size):
        seen.update(prompts=list(prompts), max_new=max_new_tokens)
        return ["21 plus 3 is 24\n\n24 minus 4 is 20", "x 29", "12 minus 5 is 7"]

    monkeypatch.setattr(reasoning, "generate_reasonings", fake_generate)
    lm = LoadedModel(cfg=None, variables={}, tokenizer=tokenizer, text_format=TextFormat(), num_thinking_steps=1)
    r = reasoning.end_state_accuracy(lm, split, TextFormat(query_template="Instruct: {instruction}\nQuery: {query}"))
    assert seen["prompts"][0] == "Instruct: Find the number.\nQuery: Start with 21."
    longest = max(len(tokenizer(t)["input_ids"]) for t in ("9 plus 1 is 10\n\n10 plus 2 is 12\n\n12 minus 5 is 7",))
    assert seen["max_new"] == longest + reasoning.LM_EVAL_MARGIN
    assert r["accuracy"] == 2 / 3 and r["per_domain"] == {"steps2": 0.5, "steps3": 1.0} and r["exact"] == 1 / 3
    assert r["examples"][1] == {"query": "Start with 28.", "generated": "x 29",
                                "gold": "28 minus 3 is 25\n\n25 plus 5 is 30"}
