"""The layout every generated task is written in, and its one writer.

A task module (arithmetic.py, hops.py) builds a `TaskData` in memory; `write` lays it out:

  train.jsonl            ReasonEmb records: query, prompt, reasoning_query,
                         positive_passages, negative_passages (hard negatives first)
  train_chains.jsonl     per train line: the chain behind it ("states": one per reasoning
                         step, the last is the answer), near misses (for checks)
  corpus.jsonl           id, the item it describes, content of every passage
  <extra files>          task-specific (the hops task: facts.jsonl, lm_corpus.jsonl)
  eval/domains.json      {domain: instruction}; domains "steps2", "steps3", ... by length
  eval/<domain>/queries.jsonl    id, query, gold_ids, excluded_ids (BRIGHT)
  eval/<domain>/documents.jsonl  id, content (BRIGHT; the whole corpus)
  eval/<domain>/reasoning.jsonl  id, reasoning (gold chain of thought)
  eval/<domain>/chains.jsonl     id, the chain, "states"
  dev/domains.json, dev/<domain>/...  the development split, laid out as eval/ (ids "dev-...")
  tokenizer/             Hugging Face tokenizer (trained on the generated text, or given)
  meta.json              generator, task, version, seed, options, counts, token lengths,
                         the answer's form ("answer"), the LM texts ("lm_corpus"), content hash
  manifest.json          every file's size and sha256 (laser_jax.storage; synthetic.generate
                         writes it last)

Files are byte-identical for the same task, seed and options: rows are written in a fixed
order, JSON without sorting keys, "\\n" line ends.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Callable, Dict, List, Optional

from transformers import AutoTokenizer

from laser_jax import storage
from laser_jax.data.formatting import DEFAULT_QUERY_TEMPLATE

QUERY_TEMPLATE = DEFAULT_QUERY_TEMPLATE  # spec section 5: "Instruct: {instruction}\nQuery: {query}"
SEGMENT_SEP = "\n\n"
GENERATOR = "laser_jax.data.synthetic"
META_FILE = "meta.json"
CORPUS_FILE = "corpus.jsonl"
# The answer of a task whose meta.json does not say (generations before the hops task).
NUMBER_ANSWER = {"kind": "number", "pattern": r"-?\d+"}


@dataclasses.dataclass
class TaskData:
    """Everything a task writes, in memory.

    instruction: the retrieval instruction (train prompt and domains.json).
    corpus: corpus.jsonl rows ({"id", <item key>, "content"}), in file order.
    train, train_meta: train.jsonl and train_chains.jsonl rows, line for line.
    domains, dev: {domain: {"queries", "reasoning", "chains"}} of eval/ and dev/.
    extra_files: {file name: rows} written beside corpus.jsonl.
    lm_extra_texts: texts the LM pretraining reads besides train.jsonl and the passages
      (part of the tokenizer's training texts).
    meta: task-specific meta.json entries ("answer", "lm_corpus", ...).
    """
    instruction: str
    corpus: List[dict]
    train: List[dict]
    train_meta: List[dict]
    domains: Dict[str, dict]
    dev: Dict[str, dict]
    extra_files: Dict[str, List[dict]] = dataclasses.field(default_factory=dict)
    lm_extra_texts: List[str] = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)


def dump_jsonl(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def split_lengths(total: int, lengths: List[int]) -> Dict[int, int]:
    """`total` spread over `lengths` as evenly as possible (the first ones get the rest)."""
    base, extra = divmod(total, len(lengths))
    return {n: base + (i < extra) for i, n in enumerate(lengths)}


def texts(data: TaskData) -> Dict[str, list]:
    """Formatted query, explicit and document texts (unwrapped) of train, eval and dev, the
    number of reasoning steps of each query, and the LM's extra texts."""
    fmt = lambda q: QUERY_TEMPLATE.format(instruction=data.instruction, query=q)  # noqa: E731
    pairs = [(r["query"], r["reasoning_query"], len(m["states"])) for r, m in zip(data.train, data.train_meta)]
    for dom in list(data.domains.values()) + list(data.dev.values()):
        pairs += [(q["query"], r["reasoning"], len(c["states"]))
                  for q, r, c in zip(dom["queries"], dom["reasoning"], dom["chains"])]
    return {"query": [fmt(q) for q, _, _ in pairs], "explicit": [fmt(q) + r for q, r, _ in pairs],
            "document": [d["content"] for d in data.corpus], "steps": [n for _, _, n in pairs],
            "extra": list(data.lm_extra_texts)}


def token_lengths(tokenizer_dir: str, task_texts: Dict[str, list]) -> dict:
    """Longest and mean token counts of the query, explicit and document texts, the reasoning's
    tokens per step (explicit minus query tokens over the steps), the split token and the
    vocabulary size, under the task's tokenizer."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out, lens = {}, {}
    for name in ("query", "explicit", "document"):
        lens[name] = [len(ids) for ids in tok(task_texts[name], add_special_tokens=False)["input_ids"]]
        out[name] = {"max": max(lens[name]), "mean": round(sum(lens[name]) / len(lens[name]), 2)}
    per_step = [(e - q) / n for e, q, n in zip(lens["explicit"], lens["query"], task_texts["steps"])]
    out["reasoning_per_step"] = {"max": round(max(per_step), 2), "mean": round(sum(per_step) / len(per_step), 2)}
    out["split_token_ids"] = tok.encode(SEGMENT_SEP, add_special_tokens=False)
    out["vocab_size"] = len(tok)
    return out


def content_hash(out_dir: str) -> str:
    """sha256 over every file of a generated directory except meta.json and the manifest
    (path + bytes)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(out_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            if rel in (META_FILE, storage.MANIFEST):
                continue
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def paths(out_dir: str, domains, dev_domains=(), lm_corpus: str = CORPUS_FILE) -> dict:
    """Paths of a generated directory: train, train_chains, corpus, lm_corpus (the passages
    file the LM pretraining reads), eval, domains, tokenizer, meta, eval/<d>, and with a dev
    split dev, dev_domains, dev/<d>."""
    out = {"train": "train.jsonl", "train_chains": "train_chains.jsonl", "corpus": CORPUS_FILE,
           "lm_corpus": lm_corpus, "eval": "eval", "domains": "eval/domains.json", "tokenizer": "tokenizer",
           "meta": META_FILE}
    if dev_domains:
        out.update({"dev": "dev", "dev_domains": "dev/domains.json"})
    out = {k: os.path.join(out_dir, v) for k, v in out.items()}
    out.update({f"eval/{d}": os.path.join(out_dir, "eval", d) for d in domains})
    out.update({f"dev/{d}": os.path.join(out_dir, "dev", d) for d in dev_domains})
    return out


def paths_from_meta(out_dir: str, meta: dict) -> dict:
    """`paths` of a generated directory from its meta.json."""
    return paths(os.path.abspath(out_dir), meta["domains"], meta.get("dev_domains", ()),
                 meta.get("lm_corpus", CORPUS_FILE))


def write(data: TaskData, out_dir: str, *, task: str, version: int, seed: int, options: dict,
          save_tokenizer: Callable[[Dict[str, list], str], None]) -> None:
    """Write `data` into `out_dir` (module doc); `save_tokenizer(texts, dir)` writes tokenizer/."""
    dump_jsonl(os.path.join(out_dir, "train.jsonl"), data.train)
    dump_jsonl(os.path.join(out_dir, "train_chains.jsonl"), data.train_meta)
    dump_jsonl(os.path.join(out_dir, CORPUS_FILE), data.corpus)
    for name, rows in data.extra_files.items():
        dump_jsonl(os.path.join(out_dir, name), rows)
    for split_name, split_domains in (("eval", data.domains), ("dev", data.dev)):
        if split_domains:
            write_split(os.path.join(out_dir, split_name), split_domains, data)
    task_texts = texts(data)
    tok_dir = os.path.join(out_dir, "tokenizer")
    save_tokenizer(task_texts, tok_dir)
    meta = {
        "generator": GENERATOR, "task": task, "version": version, "seed": seed, "options": options,
        "counts": {"train": len(data.train), "documents": len(data.corpus),
                   **{f"eval/{k}": len(v["queries"]) for k, v in data.domains.items()},
                   **{f"dev/{k}": len(v["queries"]) for k, v in data.dev.items()}},
        "domains": sorted(data.domains),
        "dev_domains": sorted(data.dev),
        "query_template": QUERY_TEMPLATE,
        "token_lengths": token_lengths(tok_dir, task_texts),
        "answer": NUMBER_ANSWER, "lm_corpus": CORPUS_FILE,
        **data.meta,
        "content_sha256": content_hash(out_dir),
    }
    with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def write_split(split_dir: str, domains: dict, data: TaskData) -> None:
    """One BRIGHT-format split (eval/ or dev/): a directory per domain and domains.json."""
    for name, dom in domains.items():
        ddir = os.path.join(split_dir, name)
        os.makedirs(ddir)
        dump_jsonl(os.path.join(ddir, "queries.jsonl"), dom["queries"])
        dump_jsonl(os.path.join(ddir, "documents.jsonl"), ({"id": d["id"], "content": d["content"]}
                                                           for d in data.corpus))
        dump_jsonl(os.path.join(ddir, "reasoning.jsonl"), dom["reasoning"])
        dump_jsonl(os.path.join(ddir, "chains.jsonl"), dom["chains"])
    with open(os.path.join(split_dir, "domains.json"), "w", encoding="utf-8") as f:
        json.dump({name: data.instruction for name in domains}, f, indent=1)
        f.write("\n")


def replace_dir(src: str, dst: str) -> None:
    """Move the finished generation `src` to `dst`, replacing an earlier generation there
    (a directory with meta.json); refuse any other non-empty directory."""
    if os.path.isdir(dst):
        if os.path.exists(os.path.join(dst, META_FILE)):
            shutil.rmtree(dst)
        elif not os.listdir(dst):
            os.rmdir(dst)
        else:
            raise FileExistsError(f"{dst} exists, is not empty and holds no meta.json; "
                                  "refusing to overwrite it")
    try:
        os.rename(src, dst)
    except OSError:  # a concurrent generation got there first; its output is as good
        if not os.path.exists(os.path.join(dst, META_FILE)):
            raise


def read_meta(out_dir: str) -> Optional[dict]:
    """meta.json of a generated directory, or None when missing or unreadable."""
    try:
        with open(os.path.join(out_dir, META_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def find_meta(path: str, levels: int = 2) -> Optional[dict]:
    """meta.json of the generated task that holds `path` (the task directory, a split such
    as eval/, or a domain directory such as eval/steps3), or None."""
    path = os.path.abspath(path)
    for _ in range(levels + 1):
        meta = read_meta(path)
        if meta is not None and meta.get("generator") == GENERATOR:
            return meta
        path = os.path.dirname(path)
    return None


def answer_spec(meta: Optional[dict]) -> dict:
    """{"kind": "number" | "entity", "pattern": regex}: how a reasoning's answer (its last
    match) is found; a task without the entry (or no task) answers with a number."""
    return dict((meta or {}).get("answer") or NUMBER_ANSWER)
