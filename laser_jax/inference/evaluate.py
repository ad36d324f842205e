"""BRIGHT-format evaluation: encode (or load) embeddings, exact search, nDCG/Recall.

  python -m laser_jax.evaluate --model=PATH --data=DIR [--domains=a,b] [--output=RESULTS.json] \
      [--chat_template=true|false] [--query_template=...] [--num_thinking_steps=K] [--model_dtype=float16]
  python -m laser_jax.evaluate --data=DOMAIN_DIR --query_embeddings=Q.npy \
      --document_embeddings=D.npy [--output=RESULTS.json]

DIR holds one sub-directory per domain (see laser_jax.retrieval.bright); with pre-computed
embeddings DIR is one domain directory and each .npy has an ids file beside it
(Q.npy -> Q.ids.txt, one id per line in row order). The model's text format is its own
(for a Hugging Face directory without laser.json the one `laser_jax.inference.text_format`
chooses, said on stderr) unless --chat_template / --query_template / --num_thinking_steps
say otherwise; the results JSON records the format and K used.

The core takes callables, so any encoder (or a test's fake) can drive it:
  evaluate_domain(domain, encode_queries_fn, encode_documents_fn)   one domain
  evaluate_dir(data_dir, encode_queries_fn, encode_documents_fn)    every domain of a dir
  evaluate_precomputed(domain_dir, q_npy, d_npy)                    saved embeddings
  score_embeddings(domain, q_emb, d_emb)                            search + metrics
encode_queries_fn(texts: list[str], instruction: str) -> float [Q, D];
encode_documents_fn(texts: list[str]) -> float [N, D].
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from absl import flags, logging

from laser_jax import storage
from laser_jax.cli import run_cli
from laser_jax.inference.encoder import LaserEncoder, check_num_thinking_steps_flag, check_positive
from laser_jax.inference.text_format import define_format_flags, format_flag_values
from laser_jax.method.views import resolve_num_thinking_steps
from laser_jax.retrieval import bright
from laser_jax.retrieval.metrics import DEFAULT_METRICS, evaluate_run, run_from_topk
from laser_jax.retrieval.search import DEFAULT_BLOCK_SIZE, exact_topk

__all__ = [
    "DomainResult", "evaluate_domain", "evaluate_dir", "evaluate_precomputed", "score_embeddings",
    "ids_path", "summarize", "format_table", "main",
]

EncodeQueries = Callable[[List[str], str], np.ndarray]
EncodeDocuments = Callable[[List[str]], np.ndarray]


@dataclasses.dataclass
class DomainResult:
    """Evaluation of one domain.

    Attributes:
      name: domain name.
      metrics: {metric name: mean over queries}, e.g. {"ndcg@10": 0.23, ...}.
      per_query: {query id: {metric name: value}}.
      num_queries, num_documents: sizes of the domain.
      run: {query id: {document id: score}} of the retrieved lists (excluded ids never in it).
    """
    name: str
    metrics: Dict[str, float]
    per_query: Dict[str, Dict[str, float]]
    num_queries: int
    num_documents: int
    run: Dict[str, Dict[str, float]]


def _depth(metrics: Sequence[str]) -> int:
    return max(int(m.partition("@")[2]) for m in metrics)


def score_embeddings(domain: bright.BrightDomain, query_emb, doc_emb, *,
                     query_ids: Optional[Sequence[str]] = None,
                     doc_ids: Optional[Sequence[str]] = None,
                     metrics: Sequence[str] = DEFAULT_METRICS,
                     block_size: int = DEFAULT_BLOCK_SIZE) -> DomainResult:
    """Exact search of query embeddings over document embeddings, then metrics.

    Excluded ids are dropped inside the search (before its top-k), so every query still gets
    a full list of max-cut-off (e.g. 100) documents, and dropped again before scoring.

    Args:
      domain: the BrightDomain (qrels, excluded ids).
      query_emb: float [Q, D], row i embeds query_ids[i].
      doc_emb: float [N, D] (may be memory-mapped), row j embeds doc_ids[j].
      query_ids, doc_ids: row ids; default the domain's file order.
      metrics: metric names ("ndcg@10", "recall@100", ...).
      block_size: corpus rows per search block.

    Returns:
      DomainResult.
    """
    query_ids = list(domain.query_ids if query_ids is None else query_ids)
    doc_ids = list(domain.doc_ids if doc_ids is None else doc_ids)
    if np.shape(query_emb)[0] != len(query_ids) or np.shape(doc_emb)[0] != len(doc_ids):
        raise ValueError(f"{domain.name}: embeddings {np.shape(query_emb)} / {np.shape(doc_emb)} "
                         f"do not match {len(query_ids)} queries / {len(doc_ids)} documents")
    doc_row = {d: j for j, d in enumerate(doc_ids)}
    excluded = domain.excluded
    exclude = [[doc_row[d] for d in excluded[q]] for q in query_ids]
    scores, indices = exact_topk(query_emb, doc_emb, _depth(metrics), block_size=block_size,
                                 exclude=exclude)
    run = run_from_topk(query_ids, doc_ids, scores, indices)
    per_query, mean = evaluate_run(run, domain.qrels, metrics, excluded=excluded)
    return DomainResult(domain.name, mean, per_query, len(query_ids), len(doc_ids), run)


def evaluate_domain(domain: bright.BrightDomain, encode_queries_fn: EncodeQueries,
                    encode_documents_fn: EncodeDocuments, *,
                    metrics: Sequence[str] = DEFAULT_METRICS,
                    block_size: int = DEFAULT_BLOCK_SIZE) -> DomainResult:
    """Encodes one domain's queries (with its instruction) and documents, searches, scores.

    Args:
      domain: a loaded BrightDomain (its instruction must be known).
      encode_queries_fn: (texts [Q], instruction) -> float [Q, D].
      encode_documents_fn: (texts [N]) -> float [N, D].
      metrics, block_size: as in score_embeddings.

    Returns:
      DomainResult.
    """
    instruction = domain.require_instruction()
    logging.info("%s: encoding %d queries", domain.name, len(domain.queries))
    q_emb = np.asarray(encode_queries_fn(list(domain.queries), instruction))
    logging.info("%s: encoding %d documents", domain.name, len(domain.documents))
    d_emb = np.asarray(encode_documents_fn(list(domain.documents)))
    if q_emb.ndim != 2 or d_emb.ndim != 2 or q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"{domain.name}: encoders returned shapes {q_emb.shape} and "
                         f"{d_emb.shape}; expected [Q, D] and [N, D]")
    return score_embeddings(domain, q_emb, d_emb, metrics=metrics, block_size=block_size)


def evaluate_dir(data_dir: str, encode_queries_fn: EncodeQueries,
                 encode_documents_fn: EncodeDocuments, *, domains: Optional[Sequence[str]] = None,
                 metrics: Sequence[str] = DEFAULT_METRICS,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> List[DomainResult]:
    """evaluate_domain over the domains of a BRIGHT-format directory.

    Args:
      data_dir: directory of domain sub-directories (or one domain directory).
      encode_queries_fn, encode_documents_fn: see evaluate_domain.
      domains: names to evaluate (default all found).
      metrics, block_size: as in score_embeddings.

    Returns:
      DomainResult list in domain order.
    """
    loaded = bright.load_bright(data_dir, domains)
    for d in loaded:  # fail before any encoding when an instruction is missing
        d.require_instruction()
    return [evaluate_domain(d, encode_queries_fn, encode_documents_fn, metrics=metrics,
                            block_size=block_size) for d in loaded]


def ids_path(npy_path: str) -> str:
    """The ids file of an embeddings file: X.npy -> X.ids.txt."""
    base = npy_path[:-4] if npy_path.endswith(".npy") else npy_path
    return base + ".ids.txt"


FINITE_CHECK_ROWS = 65536  # rows per block of the finiteness check of saved embeddings


def _open_npy(npy_path: str) -> np.ndarray:
    """np.load(mmap_mode="r") with errors that name the file (storage.load_npy)."""
    return storage.load_npy(npy_path, mmap_mode="r")


def check_finite_rows(emb, path: str, block_rows: int = FINITE_CHECK_ROWS) -> None:
    """ValueError naming `path` and its first rows with NaN or Inf (read in blocks, so a
    memory-mapped corpus is never loaded whole)."""
    bad, count = [], 0
    for start in range(0, emb.shape[0], block_rows):
        block = np.asarray(emb[start:start + block_rows])
        rows = np.nonzero(~np.isfinite(block).all(axis=tuple(range(1, block.ndim))))[0]
        count += len(rows)
        bad.extend(int(start + r) for r in rows[:max(0, 5 - len(bad))])
    if count:
        raise ValueError(f"{path}: {count} row(s) with NaN or Inf values, first rows {bad} (0-based); "
                         "re-export these embeddings")


def _load_embeddings(npy_path: str, expected_ids: Sequence[str], what: str):
    """Memory-maps an .npy and reads its ids, checking they are exactly expected_ids (any order)
    and that every row is finite."""
    if not os.path.isfile(npy_path):
        raise FileNotFoundError(f"{npy_path}: {what} embeddings file not found")
    emb = _open_npy(npy_path)
    id_file = ids_path(npy_path)
    if not os.path.isfile(id_file):
        raise FileNotFoundError(f"{id_file}: ids file for {npy_path} not found (one id per "
                                "line, in row order)")
    with open(id_file, encoding="utf-8") as f:
        ids = f.read().split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    ids = [i.rstrip("\r") for i in ids]
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise ValueError(f"{npy_path}: shape {emb.shape} does not match the {len(ids)} ids "
                         f"in {id_file}")
    seen = set()
    for line, i in enumerate(ids, 1):
        if i in seen:
            raise ValueError(f"{id_file}:{line}: duplicate id {i!r}")
        seen.add(i)
    expected = set(expected_ids)
    missing, extra = [i for i in expected_ids if i not in seen], [i for i in ids if i not in expected]
    if missing or extra:
        raise ValueError(f"{id_file}: ids do not match the domain's {what} ids: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(extra)} unknown (e.g. {extra[:3]})")
    check_finite_rows(emb, npy_path)
    return emb, ids


def evaluate_precomputed(domain_dir: str, query_embeddings: str, document_embeddings: str, *,
                         metrics: Sequence[str] = DEFAULT_METRICS,
                         block_size: int = DEFAULT_BLOCK_SIZE) -> DomainResult:
    """Scores saved embeddings of one domain directory.

    Args:
      domain_dir: one domain directory (queries.jsonl, documents.jsonl).
      query_embeddings: path of Q.npy [Q, D], with Q.ids.txt beside it.
      document_embeddings: path of D.npy [N, D] (memory-mapped), with D.ids.txt beside it.
      metrics, block_size: as in score_embeddings.

    Returns:
      DomainResult.
    """
    if not bright.is_domain_dir(domain_dir):
        raise FileNotFoundError(f"{domain_dir}: not a domain directory (no "
                                f"{bright.QUERIES_FILE}); pre-computed embeddings score one "
                                "domain at a time")
    domain = bright.load_domain(domain_dir)
    q_emb, q_ids = _load_embeddings(query_embeddings, domain.query_ids, "query")
    d_emb, d_ids = _load_embeddings(document_embeddings, domain.doc_ids, "document")
    if q_emb.shape[1] != d_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: {query_embeddings} {q_emb.shape} vs "
                         f"{document_embeddings} {d_emb.shape}")
    return score_embeddings(domain, q_emb, d_emb, query_ids=q_ids, doc_ids=d_ids,
                            metrics=metrics, block_size=block_size)


def summarize(results: Sequence[DomainResult], num_thinking_steps: Optional[int] = None) -> dict:
    """{"domains": {name: {metric: value}}, "average": {metric: mean over domains}}, and
    "num_thinking_steps": K when the embeddings were encoded here with K latent steps."""
    names = list(results[0].metrics) if results else list(DEFAULT_METRICS)
    summary = {
        "domains": {r.name: dict(r.metrics) for r in results},
        "average": {m: float(np.mean([r.metrics[m] for r in results])) if results else 0.0
                    for m in names},
    }
    if num_thinking_steps is not None:
        summary["num_thinking_steps"] = int(num_thinking_steps)
    return summary


def format_table(results: Sequence[DomainResult], num_thinking_steps: Optional[int] = None) -> str:
    """A text table: domain, nDCG@10, R@10, R@100 (x100), #queries, #docs, then the average
    (headed by the K used, when given)."""
    header = ("domain", "nDCG@10", "R@10", "R@100", "#queries", "#docs")
    keys = ("ndcg@10", "recall@10", "recall@100")
    rows = [(r.name, *(f"{100 * r.metrics.get(k, float('nan')):.2f}" for k in keys),
             str(r.num_queries), str(r.num_documents)) for r in results]
    avg = summarize(results)["average"]
    rows.append(("average", *(f"{100 * avg.get(k, float('nan')):.2f}" for k in keys),
                 str(sum(r.num_queries for r in results)),
                 str(sum(r.num_documents for r in results))))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def fmt(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    steps = "" if num_thinking_steps is None else f", num_thinking_steps K={num_thinking_steps}"
    lines = [f"(metrics in %{steps})", fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows[:-1]] + ["  ".join("-" * w for w in widths), fmt(rows[-1])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- CLI
# A private FlagValues keeps these flags out of absl's global registry, so importing this
# module next to other entry points (train, export) never clashes on flag names.
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Model directory for LaserEncoder.from_pretrained.", flag_values=FLAGS)
flags.DEFINE_string("data", None, "BRIGHT-format directory (domain sub-directories), or one "
                    "domain directory with --query_embeddings/--document_embeddings.", flag_values=FLAGS)
flags.DEFINE_list("domains", None, "Comma-separated domains to evaluate (default: all found).",
                  flag_values=FLAGS)
flags.DEFINE_string("output", None, "Write the results JSON here.", flag_values=FLAGS)
flags.DEFINE_integer("num_thinking_steps", None, "Latent steps K at inference (default: the model's "
                     "own, from laser.json or the checkpoint; 3 when neither says).", flag_values=FLAGS)
define_format_flags(FLAGS)
flags.DEFINE_enum("model_dtype", None, ["float32", "bfloat16", "float16"], "Parameter/compute dtype "
                  "(default: float32 on CPU, bfloat16 on accelerators; the LaSER authors evaluate in "
                  "float16).", flag_values=FLAGS)
flags.DEFINE_integer("max_length", 8192, "Max tokens per query/document.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "Encoding batch size.", flag_values=FLAGS)
flags.DEFINE_integer("block_size", DEFAULT_BLOCK_SIZE, "Corpus rows per search block.",
                     flag_values=FLAGS)
flags.DEFINE_string("query_embeddings", None, "Pre-computed query embeddings Q.npy "
                    "(with Q.ids.txt).", flag_values=FLAGS)
flags.DEFINE_string("document_embeddings", None, "Pre-computed document embeddings D.npy "
                    "(with D.ids.txt).", flag_values=FLAGS)
flags.DEFINE_boolean("progress", True, "Progress bars (stderr) while encoding queries and documents.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", flag_values=FLAGS, short_name="h")


def _laser_encoder_fns(model_path: str, max_length: int, batch_size: int, progress: bool = True,
                       dtype: Optional[str] = None, **overrides):
    """(encode_queries_fn, encode_documents_fn, K, text format) backed by LaserEncoder;
    `overrides`: the chat_template / query_template / num_thinking_steps given (K is the
    model's own when none is given: laser_jax.method.views.resolve_num_thinking_steps)."""
    enc = LaserEncoder.from_pretrained(model_path, dtype=dtype, **overrides)
    num_thinking_steps = resolve_num_thinking_steps(overrides.get("num_thinking_steps"), enc.num_thinking_steps)

    def encode_queries(texts, instruction):
        return enc.encode_queries(texts, instruction, num_thinking_steps=num_thinking_steps,
                                  max_length=max_length, batch_size=batch_size,
                                  show_progress_bar=progress, desc="queries")

    def encode_documents(texts):
        return enc.encode_documents(texts, num_thinking_steps=num_thinking_steps,
                                    max_length=max_length, batch_size=batch_size,
                                    show_progress_bar=progress, desc="documents")

    return encode_queries, encode_documents, num_thinking_steps, getattr(enc, "text_format", None)


def run(f: flags.FlagValues) -> dict:
    """Runs the evaluation the parsed flags describe; prints the table; returns the summary."""
    if not f.data:
        raise ValueError("--data is required")
    check_num_thinking_steps_flag(f.num_thinking_steps)
    check_positive(max_length=f.max_length, batch_size=f.batch_size, block_size=f.block_size)
    text_format = format_flag_values(f)
    steps = fmt = None
    precomputed = (f.query_embeddings is not None, f.document_embeddings is not None)
    if any(precomputed):
        if not all(precomputed):
            raise ValueError("--query_embeddings and --document_embeddings go together")
        if f.model:
            raise ValueError("give either --model or pre-computed embeddings, not both")
        given = [n for n, v in (("num_thinking_steps", f.num_thinking_steps), ("chat_template", f.chat_template),
                                ("query_template", f.query_template), ("model_dtype", f.model_dtype)) if v is not None]
        if given:
            raise ValueError(f"--{given[0]} does not apply to pre-computed embeddings")
        if f.domains:
            raise ValueError("--domains does not apply to pre-computed embeddings (one domain "
                             "directory)")
        results = [evaluate_precomputed(f.data, f.query_embeddings, f.document_embeddings,
                                        block_size=f.block_size)]
    else:
        if not f.model:
            raise ValueError("--model is required (or --query_embeddings/--document_embeddings)")
        q_fn, d_fn, steps, fmt = _laser_encoder_fns(f.model, f.max_length, f.batch_size, f.progress, f.model_dtype,
                                                    **text_format)
        results = evaluate_dir(f.data, q_fn, d_fn, domains=f.domains, block_size=f.block_size)
    summary = summarize(results, steps)
    if dataclasses.is_dataclass(fmt):
        summary["text_format"] = dataclasses.asdict(fmt)
    print(format_table(results, steps), flush=True)
    if f.output:
        write_summary(f.output, summary)
        logging.info("wrote %s", f.output)
    return summary


def write_summary(path: str, summary: dict) -> None:
    """Write a results summary (`summarize`) as indented JSON, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(summary, out, indent=2)
        out.write("\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, lambda f: run(f) and None, argv)


if __name__ == "__main__":
    sys.exit(main())
