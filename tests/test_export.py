"""laser_jax.export: JSONL -> .npy of embeddings; order, dtypes, resume, shards, validation, CLI."""
import json
import os

import numpy as np
import pytest

from hf_models import build_hf_model
from laser_jax.data.errors import DataError
from laser_jax.inference import export
from laser_jax.inference.encoder import LaserEncoder

# One shape for the texts: rows of 8, every text longer than 16 tokens so every batch is
# 32 wide (then a row's embedding does not depend on its batch, and exports match
# LaserEncoder.encode to 1e-6; across bucket widths float32 rounding grows to ~1e-6).
KW = dict(max_length=32, batch_size=8, chunk_size=40, progress=False)
N = 300
NUM_CHUNKS = 8  # ceil(300 / 40)
WORDS = "the number is sum of two smaller numbers cats weather town first take then add result".split()


def make_texts(n, seed=0):
    rng = np.random.RandomState(seed)
    return [" ".join(rng.choice(WORDS, size=rng.randint(18, 30))) + f" {i}" for i in range(n)]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


TEXTS = make_texts(N)
IDS = [f"doc-{(i * 37) % 1009}" for i in range(N)]


@pytest.fixture(scope="module")
def encoder(tokenizer, tmp_path_factory):
    assert min(len(ids) for ids in tokenizer(TEXTS)["input_ids"]) > 16
    path = str(tmp_path_factory.mktemp("model"))
    build_hf_model("qwen3", path, vocab_size=len(tokenizer))
    tokenizer.save_pretrained(path)
    return LaserEncoder.from_pretrained(path, dtype="float32")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    records = [{"id": i, "text": t, "extra": 1} for i, t in zip(IDS, TEXTS)]
    records.insert(17, "   ")  # blank lines are skipped
    return write_jsonl(path, records)


@pytest.fixture(scope="module")
def reference(encoder, corpus, tmp_path_factory):
    """An uninterrupted single-process export (kind=raw): (rows, ids)."""
    out = str(tmp_path_factory.mktemp("ref") / "ref.npy")
    result = export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    assert result.assembled and result.encoded == NUM_CHUNKS and result.num_rows == N
    return np.load(out), read_ids(out)


def read_ids(npy):
    with open(npy[:-4] + ".ids.txt") as f:
        return f.read().splitlines()


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if ".part-" in n or n.endswith(".tmp"))


class Interrupt(Exception):
    pass


def interrupt_after(k, seen):
    def hook(chunk):
        seen.append(chunk)
        if len(seen) == k:
            raise Interrupt

    return hook


# ------------------------------------------------------------------------- correctness
def test_export_equals_encode_in_input_order(reference, encoder, tmp_path_factory):
    rows, ids = reference
    assert rows.dtype == np.float32 and rows.shape == (N, encoder.cfg.hidden_size)
    assert ids == IDS
    np.testing.assert_allclose(rows, encoder.encode(TEXTS, max_length=32, batch_size=8), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_finished_export_leaves_only_the_outputs(encoder, corpus, tmp_path):
    out = str(tmp_path / "emb.npy")
    export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    assert sorted(os.listdir(tmp_path)) == ["emb.export.json", "emb.ids.txt", "emb.npy"]
    meta = json.load(open(tmp_path / "emb.export.json"))
    assert meta["num_rows"] == N and meta["settings"]["kind"] == "raw"
    # Same arguments again: nothing to do.
    again = export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    assert again.assembled and again.encoded == 0


def test_query_and_document_formatting(encoder, tmp_path):
    texts = TEXTS[:11]
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    instruction = "Given a question, retrieve passages that answer it."
    export.export_embeddings(encoder, path, str(tmp_path / "q.npy"), kind="query", instruction=instruction, **KW)
    export.export_embeddings(encoder, path, str(tmp_path / "d.npy"), kind="document", **KW)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"),
                               encoder.encode_queries(texts, instruction, max_length=32, batch_size=8), atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"),
                               encoder.encode_documents(texts, max_length=32, batch_size=8), atol=1e-6)
    with pytest.raises(ValueError, match="--instruction applies to --kind=query only"):
        export.export_embeddings(encoder, path, str(tmp_path / "x.npy"), kind="document", instruction="x", **KW)


def test_float16_rows_are_the_float32_rows_rounded(encoder, corpus, reference, tmp_path):
    out = str(tmp_path / "half.npy")
    export.export_embeddings(encoder, corpus, out, kind="raw", dtype="float16", **KW)
    half = np.load(out)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, reference[0].astype(np.float16))


# ------------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_without_redoing_finished_chunks(encoder, corpus, reference, tmp_path):
    out = str(tmp_path / "emb.npy")
    seen = []
    with pytest.raises(Interrupt):
        export.export_embeddings(encoder, corpus, out, kind="raw", on_chunk=interrupt_after(3, seen), **KW)
    progress = json.load(open(export.part_paths(out, 0, 1)["progress"]))
    assert progress["chunks_done"] == 3 and not os.path.exists(out)
    again = []
    result = export.export_embeddings(encoder, corpus, out, kind="raw", on_chunk=again.append, **KW)
    assert again == list(range(3, NUM_CHUNKS)) and (result.skipped, result.encoded) == (3, NUM_CHUNKS - 3)
    np.testing.assert_array_equal(np.load(out), reference[0])
    assert read_ids(out) == reference[1] and leftovers(tmp_path) == []


def test_restart_with_other_arguments_refuses_unless_overwrite(encoder, corpus, reference, tmp_path):
    out = str(tmp_path / "emb.npy")
    with pytest.raises(Interrupt):
        export.export_embeddings(encoder, corpus, out, kind="raw", on_chunk=interrupt_after(1, []), **KW)
    with pytest.raises(ValueError, match="dtype: was 'float32', now 'float16'.*--overwrite"):
        export.export_embeddings(encoder, corpus, out, kind="raw", dtype="float16", **KW)
    with pytest.raises(ValueError, match="chunk_size: was 40, now 30"):
        export.export_embeddings(encoder, corpus, out, kind="raw", **{**KW, "chunk_size": 30})
    with pytest.raises(ValueError, match="kind: was 'raw', now 'document'"):
        export.export_embeddings(encoder, corpus, out, kind="document", **KW)
    seen = []
    result = export.export_embeddings(encoder, corpus, out, kind="document", overwrite=True,
                                      on_chunk=seen.append, **KW)
    assert result.assembled and result.skipped == 0 and len(seen) == NUM_CHUNKS
    # A finished export is not replaced silently either.
    with pytest.raises(ValueError, match="finished export with other settings.*kind"):
        export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    export.export_embeddings(encoder, corpus, out, kind="raw", overwrite=True, **KW)
    np.testing.assert_array_equal(np.load(out), reference[0])


class OtherModel:
    """Same interface and config, different function (its embeddings are permuted)."""

    def __init__(self, encoder):
        self.enc = encoder
        self.cfg, self.text_format, self.num_thinking_steps = encoder.cfg, encoder.text_format, 3
        self.format_queries, self.format_documents = encoder.format_queries, encoder.format_documents

    def iter_batches(self, *args):
        for idx, emb in self.enc.iter_batches(*args):
            yield idx, emb[:, ::-1]


def test_restart_with_another_model_or_input_refuses(encoder, corpus, tmp_path):
    out = str(tmp_path / "emb.npy")
    with pytest.raises(Interrupt):
        export.export_embeddings(encoder, corpus, out, kind="raw", on_chunk=interrupt_after(1, []), **KW)
    with pytest.raises(ValueError, match="probe embedding differs"):
        export.export_embeddings(OtherModel(encoder), corpus, out, kind="raw", **KW)
    changed = write_jsonl(tmp_path / "changed.jsonl", [{"id": i, "text": t} for i, t in zip(IDS, TEXTS[::-1])])
    with pytest.raises(ValueError, match="input: was"):
        export.export_embeddings(encoder, changed, out, kind="raw", **KW)


def test_foreign_output_file_is_not_replaced(encoder, corpus, tmp_path):
    out = tmp_path / "emb.npy"
    np.save(out, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not written by laser_jax.export"):
        export.export_embeddings(encoder, corpus, str(out), kind="raw", **KW)


# ------------------------------------------------------------------------------ shards
def test_shard_ranges_are_contiguous_whole_chunks():
    for chunks in (1, 2, 7, 8):
        for n in (1, 2, 3, 5):
            ranges = [export.shard_chunks(chunks, n, i) for i in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == chunks
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_two_independent_shards_assembled_equal_the_single_run(encoder, corpus, reference, tmp_path, capsys):
    out = str(tmp_path / "emb.npy")
    first = export.export_embeddings(encoder, corpus, out, kind="raw", num_shards=2, shard_index=1, **KW)
    assert not first.assembled and first.output_path.endswith(".part-00001-of-00002.npy")
    assert export.main(["export", f"--output={out}", "--assemble", "--num_shards=2"]) == 2
    assert "shard 0 of 2" in capsys.readouterr().err
    export.export_embeddings(encoder, corpus, out, kind="raw", num_shards=2, shard_index=0, **KW)
    assert export.main(["export", f"--output={out}", "--assemble", "--num_shards=2"]) == 0
    np.testing.assert_array_equal(np.load(out), reference[0])
    assert read_ids(out) == reference[1] and leftovers(tmp_path) == []


def test_shards_with_other_settings_are_not_assembled(encoder, corpus, tmp_path):
    out = str(tmp_path / "emb.npy")
    export.export_embeddings(encoder, corpus, out, kind="raw", num_shards=2, shard_index=0, **KW)
    export.export_embeddings(encoder, corpus, out, kind="document", num_shards=2, shard_index=1, **KW)
    with pytest.raises(ValueError, match="other settings than shard 0: kind"):
        export.assemble(out, 2)


def test_jax_processes_each_encode_a_part_and_process_0_assembles(encoder, corpus, reference, tmp_path,
                                                                  monkeypatch):
    out = str(tmp_path / "emb.npy")
    barriers = []
    monkeypatch.setattr(export, "_barrier", barriers.append)
    monkeypatch.setattr(export, "_process_info", lambda: (3, 2))
    last = export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    # (A real barrier would wait for process 0's assembly; this one returns at once.)
    assert not os.path.exists(out) and last.chunks == 3 and len(barriers) == 2
    monkeypatch.setattr(export, "_process_info", lambda: (3, 1))
    export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    monkeypatch.setattr(export, "_process_info", lambda: (3, 0))
    result = export.export_embeddings(encoder, corpus, out, kind="raw", **KW)
    assert result.assembled and len(barriers) == 6
    np.testing.assert_array_equal(np.load(out), reference[0])
    assert read_ids(out) == reference[1] and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- validation
BAD = [
    ('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"\n', 2, None, "malformed JSON"),
    ('["a", "x"]\n', 1, None, "expected a JSON object"),
    ('{"id": "a", "text": "x"}\n\n{"text": "y"}\n', 3, "id", "missing"),
    ('{"id": ["a"], "text": "x"}\n', 1, "id", "expected a string id, got list"),
    ('{"id": true, "text": "x"}\n', 1, "id", "expected a string id, got bool"),
    ('{"id": "", "text": "x"}\n', 1, "id", "empty id"),
    ('{"id": "a\\nb", "text": "x"}\n', 1, "id", "id 'a\\\\nb' contains a line break"),
    ('{"id": "a"}\n', 1, "text", "missing"),
    ('{"id": "a", "text": 3}\n', 1, "text", "expected a string, got int"),
    ('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n', 3, "id",
     "duplicate id 'a' \\(first on line 1\\)"),
    ('{"id": 7, "text": "x"}\n{"id": "7", "text": "y"}\n', 2, "id", "duplicate id '7'"),
    ("\n  \n", None, None, "no records"),
]


@pytest.mark.parametrize("content,line,field,message", BAD)
def test_bad_lines_name_file_line_and_field(tmp_path, content, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    where = f"{path}:{line}: " if line else f"{path}: "
    what = f"field '{field}': " if field else ""
    with pytest.raises(DataError, match=f"^{where}{what}{message}"):
        export.scan_input(str(path), 4)


def test_bad_input_fails_before_encoding(encoder, tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    calls = []
    with pytest.raises(DataError, match=":2: field 'text'"):
        export.export_embeddings(encoder, path, str(tmp_path / "o.npy"), on_chunk=calls.append, **KW)
    assert calls == [] and sorted(os.listdir(tmp_path)) == ["bad.jsonl"]
    # The CLI validates before it even loads the model.
    assert export.main(["export", "--model=/nonexistent", f"--input={path}", f"--output={tmp_path / 'o.npy'}"]) == 2
    assert f"{path}:2: field 'text': expected a string, got NoneType" in capsys.readouterr().err


def test_a_chunk_boundary_can_fall_on_any_line(encoder, tmp_path):
    """Blank lines and a BOM do not shift rows, whatever the chunk size."""
    texts = TEXTS[:9]
    lines = ["\ufeff" + json.dumps({"id": "0", "text": texts[0]})] + [
        x for i, t in enumerate(texts[1:], 1) for x in (json.dumps({"id": str(i), "text": t}), "")]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    want = encoder.encode(texts, max_length=32, batch_size=8)
    for chunk in (1, 4, 9, 100):
        out = str(tmp_path / f"c{chunk}.npy")
        export.export_embeddings(encoder, path, out, kind="raw", **{**KW, "chunk_size": chunk})
        np.testing.assert_allclose(np.load(out), want, atol=1e-6)
        assert read_ids(out) == [str(i) for i in range(9)]


# ---------------------------------------------------------------------------------- CLI
def test_cli(encoder, corpus, reference, tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr(LaserEncoder, "from_pretrained",
                        classmethod(lambda cls, path, dtype=None: loaded.append((path, dtype)) or encoder))
    out = str(tmp_path / "cli.npy")
    argv = ["export", "--model=some/model", f"--input={corpus}", f"--output={out}", "--kind=raw",
            "--max_length=32", "--batch_size=8", "--chunk_size=40", "--noprogress"]
    assert export.main(argv) == 0
    assert loaded == [("some/model", None)] and capsys.readouterr().out.strip() == out
    np.testing.assert_array_equal(np.load(out), reference[0])
    assert export.main(["export", "--help"]) == 0
    assert export.main(["export", f"--input={corpus}", f"--output={out}"]) == 2
    assert export.main(argv[:-1] + ["--output=emb.bin"]) == 2
    assert ".npy" in capsys.readouterr().err
    assert export.main(argv + ["--kind=document", "--instruction=x"]) == 2
    assert export.main(argv + ["--dtype=int8"]) == 2


def test_cli_resumes_an_interrupted_run_without_rescanning(encoder, corpus, reference, tmp_path, monkeypatch):
    out = str(tmp_path / "emb.npy")
    with pytest.raises(Interrupt):
        export.export_embeddings(encoder, corpus, out, kind="raw", on_chunk=interrupt_after(2, []), **KW)
    monkeypatch.setattr(LaserEncoder, "from_pretrained", classmethod(lambda cls, path, dtype=None: encoder))

    def no_scan(*args):
        raise AssertionError("the recorded scan of an unchanged input should be reused")

    monkeypatch.setattr(export, "scan_input", no_scan)
    argv = ["export", "--model=m", f"--input={corpus}", f"--output={out}", "--kind=raw", "--max_length=32",
            "--batch_size=8", "--chunk_size=40", "--noprogress"]
    assert export.main(argv) == 0
    np.testing.assert_array_equal(np.load(out), reference[0])
