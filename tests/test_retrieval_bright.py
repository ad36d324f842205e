"""BRIGHT-format loading: happy path, instructions, and every validation error's location."""
import json
import os

import pytest

from laser_jax.data.errors import DataError
from laser_jax.retrieval import bright
from laser_jax.retrieval.bright import load_bright, load_domain

DOCS = [{"id": "d1", "content": "cats"}, {"id": "d2", "content": "dogs"},
        {"id": "d3", "content": "birds"}]
QUERIES = [
    {"id": "q1", "query": "feline?", "gold_ids": ["d1"], "excluded_ids": ["d2", "N/A"]},
    {"id": "q2", "query": "canine?", "gold_ids": ["d2", "d3"], "excluded_ids": []},
]


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def make_domain(root, name="biology", queries=QUERIES, docs=DOCS):
    d = os.path.join(root, name)
    write_lines(os.path.join(d, "queries.jsonl"), queries)
    write_lines(os.path.join(d, "documents.jsonl"), docs)
    return d


def test_load_domain(tmp_path):
    dom = load_domain(make_domain(str(tmp_path)))
    assert dom.name == "biology"
    assert dom.query_ids == ["q1", "q2"] and dom.queries == ["feline?", "canine?"]
    assert dom.doc_ids == ["d1", "d2", "d3"] and dom.documents == ["cats", "dogs", "birds"]
    assert dom.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}}
    assert dom.excluded == {"q1": ["d2"], "q2": []}  # "N/A" names no document: ignored
    assert dom.instruction == "Given a post, retrieve relevant passages that help answer the post."


def test_blank_lines_and_optional_excluded_ids(tmp_path):
    d = make_domain(str(tmp_path), queries=[{"id": "q", "query": "x", "gold_ids": ["d1"]}, "  "],
                    docs=["", DOCS[0]])
    dom = load_domain(d)
    assert dom.excluded_ids == [[]] and dom.doc_ids == ["d1"]


def test_instructions_follow_the_spec():
    ins = bright.INSTRUCTIONS
    assert set(ins) == set(bright.BRIGHT_DOMAINS) and len(ins) == 12
    post = "Given a post, retrieve relevant passages that help answer the post."
    assert ins["biology"] == ins["earth_science"] == post
    for dom in ("economics", "psychology", "robotics", "stackoverflow", "sustainable_living"):
        assert ins[dom] == f"Given a {dom} post, retrieve relevant passages that help answer the post."
    math_ex = "Given a Math problem, retrieve relevant examples that help answer the problem."
    assert ins["aops"] == ins["theoremqa_questions"] == math_ex
    assert ins["theoremqa_theorems"] == ("Given a Math problem, retrieve relevant theorems that "
                                         "help answer the problem.")
    assert ins["leetcode"] == ("Given a coding problem, retrieve relevant examples that help "
                               "answer the problem.")
    assert ins["pony"] == ("Given a question about pony program language, retrieve relevant "
                           "passages that help answer the question.")


def test_instruction_file_overrides(tmp_path):
    d = make_domain(str(tmp_path), name="synthetic")
    assert load_domain(d).instruction is None
    with pytest.raises(ValueError, match="no query instruction for domain 'synthetic'"):
        load_domain(d).require_instruction()
    with open(os.path.join(d, "instruction.txt"), "w") as f:
        f.write("Given a sum, retrieve its parts.\n")
    assert load_domain(d).instruction == "Given a sum, retrieve its parts."
    b = make_domain(str(tmp_path), name="biology")
    with open(os.path.join(b, "instruction.txt"), "w") as f:
        f.write("Custom.")
    assert load_domain(b).instruction == "Custom."


def test_load_bright_dir_and_selection(tmp_path):
    root = str(tmp_path)
    for name in ("pony", "biology", "zzz_custom"):
        make_domain(root, name)
    os.makedirs(os.path.join(root, "not_a_domain"))
    assert bright.list_domains(root) == ["biology", "pony", "zzz_custom"]
    assert [d.name for d in load_bright(root)] == ["biology", "pony", "zzz_custom"]
    assert [d.name for d in load_bright(root, ["pony"])] == ["pony"]
    with pytest.raises(FileNotFoundError, match=r"no domain directory for \['aops'\]"):
        load_bright(root, ["aops"])
    # A single domain directory is accepted as the data dir.
    assert [d.name for d in load_bright(os.path.join(root, "pony"))] == ["pony"]


def _error(tmp_path, queries=QUERIES, docs=DOCS):
    d = make_domain(str(tmp_path), queries=queries, docs=docs)
    with pytest.raises(DataError) as info:
        load_domain(d)
    return info.value, str(info.value)


@pytest.mark.parametrize("queries,docs,file,line,field,text", [
    (QUERIES, DOCS[:1] + ['{"id": "d2", "content": '] + DOCS[2:], "documents.jsonl", 2, None,
     "malformed JSON"),
    (QUERIES[:1] + ["[1, 2]"], DOCS, "queries.jsonl", 2, None, "expected a JSON object"),
    (QUERIES, DOCS[:2] + [{"id": "d3"}], "documents.jsonl", 3, "content", "missing"),
    (QUERIES, DOCS + [{"content": "x"}], "documents.jsonl", 4, "id", "missing"),
    (QUERIES, DOCS + [{"id": "d1", "content": "again"}], "documents.jsonl", 4, "id",
     "duplicate document id 'd1' (first on line 1)"),
    ([QUERIES[0], dict(QUERIES[1], id="q1")], DOCS, "queries.jsonl", 2, "id",
     "duplicate query id 'q1'"),
    ([QUERIES[0], {"id": "q2", "gold_ids": ["d1"]}], DOCS, "queries.jsonl", 2, "query", "missing"),
    ([{"id": "q", "query": "x"}], DOCS, "queries.jsonl", 1, "gold_ids", "missing"),
    ([QUERIES[0], dict(QUERIES[1], gold_ids=["d2", "d9"])], DOCS, "queries.jsonl", 2, "gold_ids",
     "gold id 'd9' names no document"),
    ([dict(QUERIES[0], gold_ids=[])], DOCS, "queries.jsonl", 1, "gold_ids", "empty"),
    ([dict(QUERIES[0], gold_ids="d1")], DOCS, "queries.jsonl", 1, "gold_ids", "expected a list"),
    ([dict(QUERIES[0], excluded_ids=[None])], DOCS, "queries.jsonl", 1, "excluded_ids",
     "expected string ids"),
    ([dict(QUERIES[0], query=3)], DOCS, "queries.jsonl", 1, "query", "expected a string"),
    (QUERIES, [dict(DOCS[0], id=["x"])], "documents.jsonl", 1, "id", "expected a string id"),
    (QUERIES, [], "documents.jsonl", None, None, "file is empty"),
    ([""], DOCS, "queries.jsonl", None, None, "file is empty"),
])
def test_validation_errors_name_file_line_field(tmp_path, queries, docs, file, line, field, text):
    err, msg = _error(tmp_path, queries, docs)
    (problem,) = err.problems
    assert os.path.basename(problem.source) == file and problem.line == line and problem.field == field
    where = f"{file}:{line}: " if line is not None else f"{file}: "
    assert where in msg
    if field:
        assert f"field '{field}'" in msg
    assert text in msg


def test_missing_files(tmp_path):
    d = os.path.join(str(tmp_path), "biology")
    write_lines(os.path.join(d, "queries.jsonl"), QUERIES)
    with pytest.raises(FileNotFoundError, match="documents.jsonl: file not found"):
        load_domain(d)
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        bright.list_domains(os.path.join(str(tmp_path), "nope"))
