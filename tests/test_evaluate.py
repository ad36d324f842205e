"""laser_jax.evaluate end to end: fake encoder, pre-computed embeddings CLI, id checks."""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from laser_jax.inference import evaluate
from laser_jax.retrieval.bright import INSTRUCTIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_domain(root, name, queries, docs, instruction=None):
    d = os.path.join(root, name)
    write_jsonl(os.path.join(d, "queries.jsonl"), queries)
    write_jsonl(os.path.join(d, "documents.jsonl"), docs)
    if instruction is not None:
        with open(os.path.join(d, "instruction.txt"), "w") as f:
            f.write(instruction)
    return d


def hash_vec(text, dim=16):
    """Deterministic fake embedding: a unit vector seeded by the text's hash."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


class FakeEncoder:
    """Queries embed as hash(instruction + text) mixed with the hash of their gold topic word."""

    def __init__(self):
        self.instructions = []

    def queries(self, texts, instruction):
        self.instructions.append(instruction)
        return np.stack([hash_vec(t.split()[-1]) + 0.5 * hash_vec(instruction + t) for t in texts]
                        ).astype(np.float32)

    def documents(self, texts):
        return np.stack([hash_vec(t.split()[0]) + 0.3 * hash_vec(t) for t in texts]).astype(np.float32)


def reference_metrics(q_emb, d_emb, query_ids, doc_ids, gold, excluded):
    """Independent: float64 scores, full ranking minus excluded, textbook nDCG@10 / recall@k."""
    scores = q_emb.astype(np.float64) @ d_emb.astype(np.float64).T
    out = {"ndcg@10": [], "recall@10": [], "recall@100": []}
    for r, qid in enumerate(query_ids):
        ranked = [doc_ids[j] for j in np.argsort(-scores[r], kind="stable")
                  if doc_ids[j] not in excluded[qid]]
        g = set(gold[qid])
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in g)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(g), 10)))
        out["ndcg@10"].append(dcg / idcg)
        out["recall@10"].append(len(g & set(ranked[:10])) / len(g))
        out["recall@100"].append(len(g & set(ranked[:100])) / len(g))
    return {k: float(np.mean(v)) for k, v in out.items()}


def random_domain(rng, n_docs, n_queries, topics=6):
    docs = [{"id": f"doc{j}", "content": f"t{rng.integers(topics)} text {j}"} for j in range(n_docs)]
    queries = []
    for i in range(n_queries):
        topic = f"t{rng.integers(topics)}"
        gold = [d["id"] for d in docs if d["content"].startswith(topic + " ")][:3] or ["doc0"]
        excl = [f"doc{j}" for j in rng.choice(n_docs, size=rng.integers(0, 4), replace=False)]
        excl = [e for e in excl if e not in gold] + ["N/A"]
        queries.append({"id": f"q{i}", "query": f"question {i} about {topic}", "gold_ids": gold,
                        "excluded_ids": excl})
    return queries, docs


def test_evaluate_dir_with_fake_encoder(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path)
    data = {"biology": random_domain(rng, 130, 7), "synthetic": random_domain(rng, 40, 5)}
    write_domain(root, "biology", *data["biology"])
    write_domain(root, "synthetic", *data["synthetic"], instruction="Find the parts.\n")
    enc = FakeEncoder()
    results = evaluate.evaluate_dir(root, enc.queries, enc.documents, block_size=32)
    assert [r.name for r in results] == ["biology", "synthetic"]
    assert enc.instructions == [INSTRUCTIONS["biology"], "Find the parts."]
    for r in results:
        queries, docs = data[r.name]
        instruction = INSTRUCTIONS["biology"] if r.name == "biology" else "Find the parts."
        q_emb = enc.queries([q["query"] for q in queries], instruction)
        d_emb = enc.documents([d["content"] for d in docs])
        ref = reference_metrics(q_emb, d_emb, [q["id"] for q in queries], [d["id"] for d in docs],
                                {q["id"]: q["gold_ids"] for q in queries},
                                {q["id"]: set(q["excluded_ids"]) for q in queries})
        assert r.metrics == pytest.approx(ref, abs=1e-9)
        assert (r.num_queries, r.num_documents) == (len(queries), len(docs))
        for q in queries:  # excluded ids never retrieved; lists never shortened by exclusion
            assert not set(r.run[q["id"]]) & set(q["excluded_ids"])
            assert len(r.run[q["id"]]) == min(100, len(docs) - len(q["excluded_ids"]) + 1)
    summary = evaluate.summarize(results)
    assert summary["average"] == pytest.approx(
        {m: (results[0].metrics[m] + results[1].metrics[m]) / 2 for m in results[0].metrics})
    table = evaluate.format_table(results)
    assert "nDCG@10" in table and "biology" in table and "average" in table

    only = evaluate.evaluate_dir(root, enc.queries, enc.documents, domains=["synthetic"])
    assert [r.name for r in only] == ["synthetic"]


def test_missing_instruction_fails_before_encoding(tmp_path):
    rng = np.random.default_rng(1)
    write_domain(str(tmp_path), "mystery", *random_domain(rng, 5, 2))

    def boom(*_):
        raise AssertionError("encoder must not run")

    with pytest.raises(ValueError, match="no query instruction for domain 'mystery'"):
        evaluate.evaluate_dir(str(tmp_path), boom, boom)


# --- pre-computed embeddings -----------------------------------------------------------

def designed_domain(root):
    """12 one-hot documents; query weights put gold documents at known ranks.

    q1: gold d00, excluded d01 (ranked first)   -> d00 at rank 1 after exclusion: nDCG 1
    q2: gold d03, d04 at ranks 2 and 4          -> nDCG = (1/log2 3 + 1/log2 5)/(1 + 1/log2 3)
    q3: gold d02 ranked 12th                    -> nDCG@10 0, R@10 0, R@100 1
    """
    docs = [{"id": f"d{j:02d}", "content": f"doc {j}"} for j in range(12)]
    queries = [
        {"id": "q1", "query": "one", "gold_ids": ["d00"], "excluded_ids": ["d01"]},
        {"id": "q2", "query": "two", "gold_ids": ["d03", "d04"], "excluded_ids": []},
        {"id": "q3", "query": "three", "gold_ids": ["d02"], "excluded_ids": ["N/A"]},
    ]
    d = write_domain(root, "robotics", queries, docs)
    w = np.zeros((3, 12), np.float32)
    w[0, [1, 0, 2]] = [0.9, 0.8, 0.7]
    w[1, [0, 3, 1, 4, 2]] = [0.9, 0.8, 0.7, 0.6, 0.5]
    w[2] = np.linspace(1.0, 0.1, 12)
    w[2, 2] = 0.0  # the lowest score of all: rank 12
    return d, [q["id"] for q in queries], [x["id"] for x in docs], w, np.eye(12, dtype=np.float16)


def save_embeddings(path, ids, emb):
    np.save(path, emb)
    with open(evaluate.ids_path(path), "w") as f:
        f.write("".join(i + "\n" for i in ids))


def test_precomputed_cli_end_to_end(tmp_path):
    d, qids, dids, q_emb, d_emb = designed_domain(str(tmp_path / "data"))
    # Rows in an order different from the files: ids files carry the mapping.
    qp, dp = np.array([2, 0, 1]), np.random.default_rng(0).permutation(12)
    save_embeddings(str(tmp_path / "Q.npy"), [qids[i] for i in qp], q_emb[qp])
    save_embeddings(str(tmp_path / "D.npy"), [dids[i] for i in dp], d_emb[dp])
    out = tmp_path / "out" / "results.json"
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-m", "laser_jax.evaluate", f"--data={d}",
         f"--query_embeddings={tmp_path / 'Q.npy'}", f"--document_embeddings={tmp_path / 'D.npy'}",
         f"--output={out}", "--block_size=5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert set(got) == {"domains", "average"} and set(got["domains"]) == {"robotics"}
    n2 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    want = {"ndcg@10": (1 + n2) / 3, "recall@10": 2 / 3, "recall@100": 1.0}
    assert got["domains"]["robotics"] == pytest.approx(want, abs=1e-9)
    assert got["average"] == pytest.approx(want, abs=1e-9)
    assert "robotics" in proc.stdout and "average" in proc.stdout


def test_precomputed_in_process_ids_checks(tmp_path, capsys):
    d, qids, dids, q_emb, d_emb = designed_domain(str(tmp_path))
    q, dd = str(tmp_path / "Q.npy"), str(tmp_path / "D.npy")
    save_embeddings(q, qids, q_emb)
    save_embeddings(dd, dids, d_emb)
    r = evaluate.evaluate_precomputed(d, q, dd)
    assert r.metrics["recall@100"] == 1.0 and r.num_documents == 12

    def fails(match):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            evaluate.evaluate_precomputed(d, q, dd)

    save_embeddings(dd, dids[:-1] + ["zzz"], d_emb)
    fails(r"D.ids.txt: ids do not match the domain's document ids: 1 missing \(e.g. \['d11'\]\), "
          r"1 unknown \(e.g. \['zzz'\]\)")
    save_embeddings(dd, dids[:-1] + ["d00"], d_emb)
    fails(r"D.ids.txt:12: duplicate id 'd00'")
    save_embeddings(dd, dids[:-1], d_emb)
    fails(r"D.npy: shape \(12, 12\) does not match the 11 ids")
    save_embeddings(dd, dids, d_emb)
    save_embeddings(q, qids, q_emb[:, :5])
    fails("embedding sizes differ")
    os.remove(evaluate.ids_path(q))
    fails("Q.ids.txt: ids file for .*Q.npy not found")

    # Through main: a clear message and exit status 1, no traceback.
    rc = evaluate.main(["evaluate", f"--data={d}", f"--query_embeddings={q}",
                        f"--document_embeddings={dd}"])
    assert rc == 2 and "Q.ids.txt: ids file" in capsys.readouterr().err
    rc = evaluate.main(["evaluate", f"--data={tmp_path}", f"--query_embeddings={q}"])
    assert rc == 2 and "go together" in capsys.readouterr().err
    rc = evaluate.main(["evaluate", f"--data={tmp_path}"])
    assert rc == 2 and "--model is required" in capsys.readouterr().err


def test_cli_model_path_uses_laser_encoder(tmp_path, monkeypatch, capsys):
    """--model wires LaserEncoder.from_pretrained(path, dtype=None) and its encode methods."""
    rng = np.random.default_rng(2)
    root = str(tmp_path / "data")
    write_domain(root, "pony", *random_domain(rng, 20, 3))
    write_domain(root, "aops", *random_domain(rng, 15, 2))
    calls = []

    class LaserEncoder:
        num_thinking_steps = 3

        @classmethod
        def from_pretrained(cls, path, dtype=None, **overrides):
            calls.append(("load", path, dtype, overrides))
            return cls()

        def encode_queries(self, queries, instruction, num_thinking_steps=3, max_length=512,
                           batch_size=32, **_):
            calls.append(("q", instruction, num_thinking_steps, max_length, batch_size))
            return np.stack([hash_vec(t) for t in queries]).astype(np.float32)

        def encode_documents(self, docs, num_thinking_steps=3, max_length=512, batch_size=32, **_):
            calls.append(("d", num_thinking_steps, max_length, batch_size))
            return np.stack([hash_vec(t) for t in docs]).astype(np.float32)

    monkeypatch.setattr(evaluate, "LaserEncoder", LaserEncoder)
    out = tmp_path / "r.json"
    rc = evaluate.main(["evaluate", "--model=/m", f"--data={root}", "--domains=pony",
                        "--num_thinking_steps=2", "--max_length=64", "--batch_size=4",
                        f"--output={out}"])
    assert rc == 0
    assert calls == [("load", "/m", None, {"num_thinking_steps": 2}), ("q", INSTRUCTIONS["pony"], 2, 64, 4),
                     ("d", 2, 64, 4)]
    got = json.loads(out.read_text())
    assert list(got["domains"]) == ["pony"]
    assert set(got["average"]) == {"ndcg@10", "recall@10", "recall@100"}
    assert "pony" in capsys.readouterr().out


def test_precomputed_non_finite_rows_are_an_error_naming_file_and_rows(tmp_path, capsys, monkeypatch):
    d, qids, dids, q_emb, d_emb = designed_domain(str(tmp_path))
    q, dd = str(tmp_path / "Q.npy"), str(tmp_path / "D.npy")
    save_embeddings(q, qids, q_emb)
    bad = d_emb.astype(np.float32)
    bad[[3, 7, 9, 11]] = np.nan
    bad[5, 0] = np.inf
    save_embeddings(dd, dids, bad)
    monkeypatch.setattr(evaluate, "FINITE_CHECK_ROWS", 4)  # rows found across blocks
    rc = evaluate.main(["evaluate", f"--data={d}", f"--query_embeddings={q}", f"--document_embeddings={dd}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {dd}: 5 row(s) with NaN or Inf values, first rows [3, 5, 7, 9, 11]"), err
    q_bad = q_emb.copy()
    q_bad[1, 2] = np.nan
    save_embeddings(q, qids, q_bad)
    with pytest.raises(ValueError, match=r"Q.npy: 1 row\(s\) with NaN or Inf values, first rows \[1\]"):
        evaluate.evaluate_precomputed(d, q, dd)


def test_truncated_npy_names_the_file(tmp_path, capsys):
    d, qids, dids, q_emb, d_emb = designed_domain(str(tmp_path))
    q, dd = str(tmp_path / "Q.npy"), str(tmp_path / "D.npy")
    save_embeddings(q, qids, q_emb)
    save_embeddings(dd, dids, d_emb.astype(np.float32))
    with open(dd, "r+b") as f:
        f.truncate(os.path.getsize(dd) - 100)
    rc = evaluate.main(["evaluate", f"--data={d}", f"--query_embeddings={q}", f"--document_embeddings={dd}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {dd}: the file is shorter than its header says: it looks truncated"), err
