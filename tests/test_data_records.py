"""Records: validation messages (file / line / field), skipping, and the three sources."""
import json
import os

import pytest

from laser_jax.data import convert
from laser_jax.data.array_record_source import write_array_record
from laser_jax.data.errors import DataError, Problem
from laser_jax.data.records import Record, normalise_passage, parse_record
from laser_jax.data.sources import open_records


def good(i=0, **changes):
    rec = {"query": f"What is {i} plus 2?", "prompt": "Given a question, retrieve passages.",
           "reasoning_query": f"First, take {i}.\n\nThen add 2.\n\nDone",
           "positive_passages": [f"The number {i + 2}"], "negative_passages": ["cats", "dogs"]}
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def write_lines(path, lines):
    """Write raw lines (str, bytes, or a dict dumped as JSON) one per line."""
    with open(path, "wb") as fh:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            if isinstance(line, str):
                line = line.encode("utf-8")
            fh.write(line + b"\n")
    return str(path)


# (bad line content, group_size, expected "location: field" fragment, expected message fragment)
BAD_LINES = [
    ('{"query": "a", ', 2, "line 3", "malformed JSON"),
    ("[1, 2]", 2, "line 3", "expected a JSON object, got list"),
    (good(query=_DROP), 2, "line 3: field 'query'", "missing"),
    (good(query=7), 2, "line 3: field 'query'", "expected a string, got int"),
    (good(query="   "), 2, "line 3: field 'query'", "is empty"),
    (good(prompt=_DROP), 2, "line 3: field 'prompt'", "missing"),
    (good(prompt=["x"]), 2, "line 3: field 'prompt'", "expected a string, got list"),
    (good(reasoning_query=_DROP), 2, "line 3: field 'reasoning_query'", "missing"),
    (good(reasoning_query=3), 2, "line 3: field 'reasoning_query'", "expected a string"),
    (good(positive_passages=_DROP), 2, "line 3: field 'positive_passages'", "missing"),
    (good(positive_passages="text"), 2, "line 3: field 'positive_passages'",
     "expected a list, got str"),
    (good(positive_passages=[]), 2, "line 3: field 'positive_passages'", "no positive passage"),
    (good(positive_passages=["ok", 5]), 2, "line 3: field 'positive_passages[1]'",
     "expected a string or an object with 'text', got int"),
    (good(positive_passages=[{"title": "t"}]), 2, "line 3: field 'positive_passages[0]'",
     "no 'text' field"),
    (good(positive_passages=[{"text": None}]), 2, "line 3: field 'positive_passages[0].text'",
     "got null"),
    (good(positive_passages=[" "]), 2, "line 3: field 'positive_passages[0]'", "empty passage"),
    (good(negative_passages=_DROP), 2, "line 3: field 'negative_passages'", "missing"),
    (good(negative_passages={"a": 1}), 2, "line 3: field 'negative_passages'",
     "expected a list, got dict"),
    (good(negative_passages=[]), 2, "line 3: field 'negative_passages'",
     "group_size=2 needs 1"),
    (good(negative_passages=[{"text": "x", "title": 4}]), 1,
     "line 3: field 'negative_passages[0].title'", "expected a string, got int"),
    (b'{"query": "caf\xe9"}', 2, "line 3", "not valid UTF-8"),
]


@pytest.mark.parametrize("bad,group_size,where,message", BAD_LINES)
def test_every_error_names_file_line_and_field(tmp_path, bad, group_size, where, message):
    # line 2 is blank, so the bad record is physical line 3
    path = write_lines(tmp_path / "train.jsonl", [good(0), "", bad, good(1)])
    with pytest.raises(DataError) as err:
        open_records(path, group_size=group_size)
    lines = [str(p) for p in err.value.problems]
    assert any(line.startswith(f"{path}: {where}: ") and message in line for line in lines), lines
    assert all(line in str(err.value) for line in lines)
    assert all(isinstance(p, Problem) and p.source == path for p in err.value.problems)
    assert isinstance(err.value, ValueError)


def test_valid_edge_cases_pass(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [
        good(0, negative_passages=[]),                      # fine with group_size 1
        good(1, reasoning_query=_DROP, reasoning_path="Because.\n\nSo."),
        good(2, prompt=""),                                 # empty instruction is allowed
    ])
    source = open_records(path, group_size=1)
    assert len(source) == 3
    assert source[1].reasoning == "Because.\n\nSo."
    assert source[0].negatives == ()


def test_missing_reasoning_allowed_when_not_required(tmp_path):
    path = write_lines(tmp_path / "ok.jsonl", [good(0, reasoning_query=_DROP)])
    assert open_records(path, require_reasoning=False)[0].reasoning == ""


def test_all_problems_of_a_file_in_one_error_capped_listing(tmp_path):
    lines = [good(i, query=_DROP, prompt=3) for i in range(15)]   # 30 problems
    path = write_lines(tmp_path / "many.jsonl", lines)
    with pytest.raises(DataError) as err:
        open_records(path)
    assert len(err.value.problems) == 30
    text = str(err.value)
    assert text.count("\n  - ") == 20
    assert "and 10 more problem(s) not listed" in text
    assert str(err.value.problems[-1]) == (f"{path}: line 15: field 'prompt': expected a "
                                           "string, got int")


def test_problems_of_several_files_are_collected(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [good(0), good(1, query=1)])
    b = write_lines(tmp_path / "b.jsonl", ["nope"])
    with pytest.raises(DataError) as err:
        open_records(str(tmp_path / "*.jsonl"))
    text = str(err.value)
    assert f"{a}: line 2: field 'query'" in text and f"{b}: line 1: malformed JSON" in text


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: file is empty"):
        open_records(str(empty))
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        open_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"nothing-\*\.jsonl: glob pattern matched no files"):
        open_records(str(tmp_path / "nothing-*.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        open_records(str(tmp_path))


def test_skip_bad_records_reports_what_it_skipped(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl",
                       [good(0), "{bad", good(2), good(3, positive_passages=[]), good(4)])
    source = open_records(path, group_size=2, skip_bad_records=True)
    assert [source[i].query for i in range(len(source))] == [
        "What is 0 plus 2?", "What is 2 plus 2?", "What is 4 plus 2?"]
    summary = source.summary
    assert (summary.num_raw, summary.num_records, summary.num_skipped) == (5, 3, 2)
    assert summary.skipped_where == (f"{path}: line 2", f"{path}: line 4")
    assert f"{path}: line 4: field 'positive_passages'" in str(summary)
    assert "skipped 2 bad record(s)" in str(summary)
    assert source.location(2) == f"{path}: line 5"


def test_blank_lines_are_reported_not_silent(tmp_path):
    path = write_lines(tmp_path / "blank.jsonl", [good(0), "", good(1)])
    source = open_records(path)
    assert len(source) == 2 and "ignored 1 blank line" in str(source.summary)
    assert source.location(1) == f"{path}: line 3"


def test_glob_concatenates_files_in_sorted_order(tmp_path):
    write_lines(tmp_path / "part-b.jsonl", [good(2), good(3)])
    write_lines(tmp_path / "part-a.jsonl", [good(0), good(1)])
    source = open_records(str(tmp_path / "part-*.jsonl"))
    assert [source[i].query for i in range(4)] == [f"What is {i} plus 2?" for i in range(4)]
    assert source.location(2).endswith("part-b.jsonl: line 1")


def test_passages_normalised_like_tevatron():
    assert normalise_passage("plain") == ("plain", None)
    assert normalise_passage({"text": "body", "title": "Head"}) == ("Head body", None)
    assert normalise_passage({"text": "body", "title": ""}) == ("body", None)
    assert normalise_passage({"text": "body"}) == ("body", None)
    record, problems = parse_record(good(0, positive_passages=[{"text": "x", "title": "T"}]))
    assert problems == [] and record.positives == ("T x",)


def tevatron_records(n=7):
    """Records with Tevatron-style passage objects (uniform types, so Arrow can hold them)."""
    out = []
    for i in range(n):
        rec = {"query": f"q{i} ünïcode", "prompt": "Find it.",
               "reasoning_query": f"step {i}.\n\nnext\n\nend",
               "positive_passages": [{"text": f"pos {i}", "title": f"T{i}" if i % 2 else ""}],
               "negative_passages": [{"text": f"neg {i}.{k}", "title": ""} for k in range(i % 3 + 1)]}
        out.append(rec)
    return out


def all_records(source):
    return [source[i] for i in range(len(source))]


def test_jsonl_hf_disk_and_array_record_sources_agree(tmp_path):
    datasets = pytest.importorskip("datasets")
    raw = tevatron_records()
    jsonl = write_lines(tmp_path / "train.jsonl", raw)
    expected = all_records(open_records(jsonl, group_size=2))
    assert expected[1].positives == ("T1 pos 1",) and isinstance(expected[0], Record)

    hf_dir = str(tmp_path / "hf")
    datasets.Dataset.from_list(raw).save_to_disk(hf_dir, num_shards=2)
    hf = open_records(hf_dir, group_size=2)
    assert all_records(hf) == expected and hf.location(5) == f"{hf_dir}: row 5"

    dict_dir = str(tmp_path / "hf_dict")
    datasets.DatasetDict(train=datasets.Dataset.from_list(raw)).save_to_disk(dict_dir)
    assert all_records(open_records(dict_dir, group_size=2)) == expected
    with pytest.raises(DataError, match="split 'test' not found"):
        open_records(dict_dir, split="test")

    raw_ar = str(tmp_path / "raw.array_record")
    write_array_record(raw, raw_ar)
    assert all_records(open_records(raw_ar, group_size=2)) == expected

    out = str(tmp_path / "converted.array_record")
    assert convert.main(["convert", f"--input={jsonl}", f"--output={out}"]) == 0
    converted = open_records(out, group_size=2)
    assert all_records(converted) == expected
    assert converted.location(3) == f"{out}: record 3"
    import grain   # the file is an ordinary grain ArrayRecord source of JSON bytes
    assert json.loads(grain.sources.ArrayRecordDataSource([out])[0])["query"] == "q0 ünïcode"


def test_hf_disk_validation_names_row_and_field(tmp_path):
    datasets = pytest.importorskip("datasets")
    raw = tevatron_records(4)
    raw[2]["query"] = ""
    hf_dir = str(tmp_path / "hf")
    datasets.Dataset.from_list(raw).save_to_disk(hf_dir)
    with pytest.raises(DataError, match=rf"{hf_dir}: row 2: field 'query': is empty"):
        open_records(hf_dir)
    no_col = str(tmp_path / "no_col")
    datasets.Dataset.from_list([{"query": "q", "prompt": "p"}]).save_to_disk(no_col)
    with pytest.raises(DataError, match="field 'positive_passages': no such column"):
        open_records(no_col)


def test_array_record_validation_names_record(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = str(tmp_path / "bad.array_record")
    writer = ArrayRecordWriter(path, "group_size:1")
    for data in (json.dumps(good(0)).encode(), b"\xff\xfe", b"{", json.dumps(good(1, query=2)).encode()):
        writer.write(data)
    writer.close()
    with pytest.raises(DataError) as err:
        open_records(path)
    text = str(err.value)
    assert f"{path}: record 1: not valid UTF-8" in text
    assert f"{path}: record 2: malformed JSON" in text
    assert f"{path}: record 3: field 'query'" in text
    empty = str(tmp_path / "empty.array_record")
    write_array_record([], empty)
    with pytest.raises(DataError, match="file is empty"):
        open_records(empty)
    # without the up-front pass a bad record still fails loudly, with its location
    lazy = open_records(path, validate=False)
    assert lazy[0].query == "What is 0 plus 2?"
    with pytest.raises(DataError, match="record 1: not valid UTF-8"):
        lazy[1]


def test_convert_cli_reports_bad_input(tmp_path, capsys):
    path = write_lines(tmp_path / "bad.jsonl", [good(0), good(1, negative_passages=[])])
    out = str(tmp_path / "o.array_record")
    assert convert.main(["convert", f"--input={path}", f"--output={out}"]) == 2
    assert f"{path}: line 2: field 'negative_passages'" in capsys.readouterr().err
    assert not os.path.exists(out)
    assert convert.main(["convert", f"--input={path}", f"--output={out}", "--skip_bad_records"]) == 0
    assert "skipped 1 bad record(s)" in capsys.readouterr().out
    assert len(open_records(out)) == 1
