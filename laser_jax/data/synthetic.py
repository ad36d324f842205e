"""Generate the embedded default task: multi-step arithmetic retrieval over numbers.

    python -m laser_jax.data.synthetic --out=DIR --seed=S [--size=50 --n_train=4000 ...]

A query gives a start number and 2-4 operations ("Start with 7. Add 3, then double it,
then subtract 4."); the relevant passages describe the END number, which no token of the
query names. The gold reasoning writes one step per "\\n\\n" segment
("7 plus 3 is 10\\n\\n10 doubled is 20\\n\\n20 minus 4 is 16"), every intermediate state is
itself described by passages of the corpus (so LaSER's trajectory loss, which scores the
explicit view's state at each segment end against the documents, supervises real
intermediate states), and hard negatives are near misses: the end reached when exactly one
operation is replaced by a plausible mistake. Evaluation chains (start, operations) never
occur in training; training also holds single operations (train_min_steps=1). A development
split (dev/, same format and lengths as eval/) holds further chains that occur neither in
training nor in the evaluation set: tune on dev/, report on eval/.

By default numbers stay inside 0..size-1 (chains leaving it are not drawn), so the start
number carries coarse information about the answer and a model trained from scratch gets a
gradient early; exact retrieval needs every step. With wrap=True the arithmetic is modulo
size: then no single token correlates with the answer, and in calibration runs (tiny Qwen3
trained from scratch, 2-4 layers, ~2000 steps) the latent view never left chance.

Layout of DIR (byte-identical for the same seed and options):
  train.jsonl            ReasonEmb records: query, prompt, reasoning_query,
                         positive_passages, negative_passages (hard negatives first)
  train_chains.jsonl     per train line: start, ops, states, near misses (for checks)
  corpus.jsonl           id, number, content of every passage
  eval/domains.json      {domain: instruction}; domains "steps2", "steps3", ... by length
  eval/<domain>/queries.jsonl    id, query, gold_ids, excluded_ids (BRIGHT)
  eval/<domain>/documents.jsonl  id, content (BRIGHT; the whole corpus)
  eval/<domain>/reasoning.jsonl  id, reasoning (gold chain of thought)
  eval/<domain>/chains.jsonl     id, start, ops, states
  manifest.json          every file's size and sha256, written last (laser_jax.storage);
                         a rerun names each damaged file and generates the task again
  dev/domains.json, dev/<domain>/...  the development split, laid out as eval/ (ids "dev-...")
  tokenizer/             Qwen-style byte-level BPE trained on the generated text (HF format)
  meta.json              generator version, seed, options, counts, token lengths, hash
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags
from transformers import AutoTokenizer

from laser_jax import storage, workdir_lock
from laser_jax.cli import define_help, run_cli
from laser_jax.data import bpe
from laser_jax.data.synthetic_chains import Chain, World, make_world, near_misses, sample_chains, states
from laser_jax.data.synthetic_docs import build_corpus
from laser_jax.data.synthetic_text import SEGMENT_SEP, instruction, render_query, render_reasoning

log = logging.getLogger("laser_jax")
TMP_PREFIX = ".synthetic-"  # a generation's temporary directory beside its output
VERSION = 2  # 2: dev/ split (its chains are also held out of training)
QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"  # spec section 5


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """Knobs of the generator; defaults are the embedded default task."""
    size: int = 50               # numbers 0..size-1, each described by passages
    wrap: bool = False           # arithmetic modulo size; else chains stay inside 0..size-1
    min_steps: int = 2           # shortest evaluation chain (operations per query)
    max_steps: int = 4           # longest chain; one eval domain per length
    train_min_steps: int = 1     # shortest training chain (1: single operations are taught too)
    max_operand: int = 5         # add / subtract 1..max_operand
    multiply: bool = True        # also "double it" and "triple it"
    n_train: int = 4000          # training queries, lengths uniform over train_min..max
    n_eval_per_domain: int = 100  # evaluation queries per chain length
    n_dev_per_domain: int = 100  # development queries per chain length (0 = no dev/ split)
    docs_per_number: int = 3     # passages per number (all are positives of that number)
    n_random_negatives: int = 2  # random other numbers after the hard negatives
    paraphrase: bool = True      # vary the wording of queries
    vocab_size: int = 768        # tokenizer vocabulary (incl. 256 bytes and special tokens)

    def __post_init__(self):
        if not 2 <= self.size <= 999:
            raise ValueError("size must be in 2..999")
        if not 1 <= self.min_steps <= self.max_steps or not 1 <= self.train_min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps, train_min_steps <= max_steps")
        if self.max_operand < 1 or self.docs_per_number < 1:
            raise ValueError("max_operand and docs_per_number must be >= 1")
        if self.n_eval_per_domain < 1 or self.n_dev_per_domain < 0:
            raise ValueError("need n_eval_per_domain >= 1 and n_dev_per_domain >= 0")


def _dump(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def _chain_row(chain: Chain, world: World) -> dict:
    return {"start": chain.start, "ops": [[op.kind, op.k] for op in chain.ops],
            "states": states(chain, world)}


def _split_lengths(total: int, lengths: list[int]) -> dict[int, int]:
    base, extra = divmod(total, len(lengths))
    return {n: base + (i < extra) for i, n in enumerate(lengths)}


def _build(opts: SyntheticOptions, seed: int) -> dict:
    """All records in memory (no I/O)."""
    world = make_world(opts.size, opts.wrap, opts.max_operand, opts.multiply)
    corpus = build_corpus(opts.size, opts.wrap, opts.docs_per_number, random.Random(f"{seed}/docs"))
    by_number = [[d for d in corpus if d.number == n] for n in range(opts.size)]
    instr = instruction(world)

    rng_eval = random.Random(f"{seed}/eval")
    eval_lengths = range(opts.min_steps, opts.max_steps + 1)
    eval_chains = {n: sample_chains(rng_eval, opts.n_eval_per_domain, n, world) for n in eval_lengths}
    # Drawn after (and apart from) the evaluation chains, so eval/ is the same with or without dev/.
    rng_dev = random.Random(f"{seed}/dev")
    dev_chains = {n: sample_chains(rng_dev, opts.n_dev_per_domain, n, world, exclude=set(eval_chains[n]))
                  for n in eval_lengths} if opts.n_dev_per_domain else {}
    rng_train = random.Random(f"{seed}/train")
    train_chains = []
    train_lengths = list(range(opts.train_min_steps, opts.max_steps + 1))
    shortfall = 0  # short chains may be too few for their share: longer ones make it up
    for n, count in _split_lengths(opts.n_train, train_lengths).items():
        held_out = set(eval_chains.get(n, ())) | set(dev_chains.get(n, ()))
        got = sample_chains(rng_train, count + shortfall, n, world, exclude=held_out,
                            allow_fewer=n < opts.max_steps)
        shortfall = count + shortfall - len(got)
        train_chains += got
    rng_train.shuffle(train_chains)

    train, train_meta = [], []
    for chain in train_chains:
        end = states(chain, world)[-1]
        misses = near_misses(chain, world, rng_train)
        hard = {m.end for m in misses}
        others = [x for x in range(opts.size) if x != end and x not in hard]
        randoms = rng_train.sample(others, min(opts.n_random_negatives, len(others)))
        positives = [d.content for d in by_number[end]]
        rng_train.shuffle(positives)
        train.append({
            "query": render_query(chain, rng_train, opts.paraphrase),
            "prompt": instr,
            "reasoning_query": render_reasoning(chain, world),
            "positive_passages": positives,
            "negative_passages": [rng_train.choice(by_number[x]).content
                                  for x in [m.end for m in misses] + randoms],
        })
        row = _chain_row(chain, world)
        row["near_misses"] = [{"step": m.step, "op": [m.op.kind, m.op.k], "end": m.end} for m in misses]
        row["random_negatives"] = randoms
        train_meta.append(row)

    def split(chains_by_length, rng, prefix=""):
        domains = {}
        for n, chains in chains_by_length.items():
            queries, reasoning, chain_rows = [], [], []
            for i, chain in enumerate(chains):
                qid = f"{prefix}steps{n}-{i:04d}"
                end = states(chain, world)[-1]
                queries.append({"id": qid, "query": render_query(chain, rng, opts.paraphrase),
                                "gold_ids": [d.id for d in by_number[end]], "excluded_ids": []})
                reasoning.append({"id": qid, "reasoning": render_reasoning(chain, world)})
                chain_rows.append({"id": qid, **_chain_row(chain, world)})
            domains[f"steps{n}"] = {"queries": queries, "reasoning": reasoning, "chains": chain_rows}
        return domains

    return {"instruction": instr, "corpus": corpus, "train": train, "train_meta": train_meta,
            "domains": split(eval_chains, rng_eval), "dev": split(dev_chains, rng_dev, "dev-")}


def _texts(data: dict) -> dict[str, list[str]]:
    """Formatted query, explicit and document texts (unwrapped) of train and eval."""
    fmt = lambda q: QUERY_TEMPLATE.format(instruction=data["instruction"], query=q)  # noqa: E731
    pairs = [(r["query"], r["reasoning_query"]) for r in data["train"]]
    for dom in list(data["domains"].values()) + list(data["dev"].values()):
        pairs += [(q["query"], r["reasoning"]) for q, r in zip(dom["queries"], dom["reasoning"])]
    return {"query": [fmt(q) for q, _ in pairs], "explicit": [fmt(q) + r for q, r in pairs],
            "document": [d.content for d in data["corpus"]]}


def _token_lengths(tokenizer_dir: str, texts: dict[str, list[str]]) -> dict:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = {}
    for name, items in texts.items():
        lens = [len(ids) for ids in tok(items, add_special_tokens=False)["input_ids"]]
        out[name] = {"max": max(lens), "mean": round(sum(lens) / len(lens), 2)}
    out["split_token_ids"] = tok.encode(SEGMENT_SEP, add_special_tokens=False)
    out["vocab_size"] = len(tok)
    return out


def content_hash(out_dir: str) -> str:
    """sha256 over every file of a generated directory except meta.json (path + bytes)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(out_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            if rel in ("meta.json", storage.MANIFEST):
                continue
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def paths(out_dir: str, domains, dev_domains=()) -> dict:
    """Paths of a generated directory: train, corpus, eval, domains, tokenizer, meta, eval/<d>,
    and with a dev split dev, dev_domains, dev/<d>."""
    out = {"train": "train.jsonl", "train_chains": "train_chains.jsonl", "corpus": "corpus.jsonl",
           "eval": "eval", "domains": "eval/domains.json", "tokenizer": "tokenizer",
           "meta": "meta.json"}
    if dev_domains:
        out.update({"dev": "dev", "dev_domains": "dev/domains.json"})
    out = {k: os.path.join(out_dir, v) for k, v in out.items()}
    out.update({f"eval/{d}": os.path.join(out_dir, "eval", d) for d in domains})
    out.update({f"dev/{d}": os.path.join(out_dir, "dev", d) for d in dev_domains})
    return out


def _write(data: dict, opts: SyntheticOptions, seed: int, out_dir: str) -> None:
    _dump(os.path.join(out_dir, "train.jsonl"), data["train"])
    _dump(os.path.join(out_dir, "train_chains.jsonl"), data["train_meta"])
    _dump(os.path.join(out_dir, "corpus.jsonl"),
          ({"id": d.id, "number": d.number, "content": d.content} for d in data["corpus"]))
    for split_name, split_domains in (("eval", data["domains"]), ("dev", data["dev"])):
        if split_domains:
            _write_split(os.path.join(out_dir, split_name), split_domains, data)
    texts = _texts(data)
    tok_dir = os.path.join(out_dir, "tokenizer")
    bpe.save_tokenizer(texts["explicit"] + texts["document"], tok_dir, opts.vocab_size)
    meta = {
        "generator": "laser_jax.data.synthetic", "version": VERSION, "seed": seed,
        "options": dataclasses.asdict(opts),
        "counts": {"train": len(data["train"]), "documents": len(data["corpus"]),
                   **{f"eval/{k}": len(v["queries"]) for k, v in data["domains"].items()},
                   **{f"dev/{k}": len(v["queries"]) for k, v in data["dev"].items()}},
        "domains": sorted(data["domains"]),
        "dev_domains": sorted(data["dev"]),
        "query_template": QUERY_TEMPLATE,
        "token_lengths": _token_lengths(tok_dir, texts),
        "content_sha256": content_hash(out_dir),
    }
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def _write_split(split_dir: str, domains: dict, data: dict) -> None:
    """One BRIGHT-format split (eval/ or dev/): a directory per domain and domains.json."""
    for name, dom in domains.items():
        ddir = os.path.join(split_dir, name)
        os.makedirs(ddir)
        _dump(os.path.join(ddir, "queries.jsonl"), dom["queries"])
        _dump(os.path.join(ddir, "documents.jsonl"),
              ({"id": d.id, "content": d.content} for d in data["corpus"]))
        _dump(os.path.join(ddir, "reasoning.jsonl"), dom["reasoning"])
        _dump(os.path.join(ddir, "chains.jsonl"), dom["chains"])
    with open(os.path.join(split_dir, "domains.json"), "w", encoding="utf-8") as f:
        json.dump({name: data["instruction"] for name in domains}, f, indent=1)
        f.write("\n")


def generate(out_dir: str, seed: int = 0, **options) -> dict:
    """Generate the task into `out_dir` (replacing an earlier generation there).

    Args:
      out_dir: target directory; must be missing, empty, or an earlier output (has meta.json).
      seed: integer seed; same seed and options give byte-identical files.
      **options: fields of SyntheticOptions.

    Returns:
      dict of paths (see `paths`).
    """
    opts = SyntheticOptions(**options)
    seed = int(seed)
    data = _build(opts, seed)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + storage.owner_tag(), dir=parent)
    try:
        _write(data, opts, seed, tmp)
        storage.write_manifest(tmp)  # issue 27: what was written, last (the directory is renamed into place)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths(out_dir, data["domains"], data["dev"])


def _replace_dir(src: str, dst: str) -> None:
    if os.path.isdir(dst):
        if os.path.exists(os.path.join(dst, "meta.json")):
            shutil.rmtree(dst)
        elif not os.listdir(dst):
            os.rmdir(dst)
        else:
            raise FileExistsError(f"{dst} exists, is not empty and holds no meta.json; "
                                  "refusing to overwrite it")
    try:
        os.rename(src, dst)
    except OSError:  # a concurrent generation got there first; its output is as good
        if not os.path.exists(os.path.join(dst, "meta.json")):
            raise


def read_meta(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, "meta.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_current(out_dir: str, seed: int = 0, **options) -> bool:
    """True if `out_dir` holds an intact generation for this seed, options and version."""
    meta = read_meta(out_dir)
    want = dataclasses.asdict(SyntheticOptions(**options))
    return (meta is not None and meta.get("version") == VERSION and meta.get("seed") == int(seed)
            and meta.get("options") == want and meta.get("content_sha256") == content_hash(out_dir))


def ensure_generated(out_dir: str, seed: int = 0, **options) -> dict:
    """Paths of the task in `out_dir`, generating it first if missing, stale or damaged (a
    damaged file is named in a warning; temporary directories of interrupted generations
    beside `out_dir` are removed)."""
    for left in storage.remove_leftovers(os.path.dirname(os.path.abspath(out_dir)), TMP_PREFIX):
        log.warning("removed %s, left by an interrupted task generation", left)
    if is_current(out_dir, seed, **options):
        check = storage.verify_manifest(out_dir)
        if not check.intact:  # the files verify by meta.json's content hash: the manifest is what is wrong
            for damage in check.damaged:
                log.warning("%s; the task's files are intact (meta.json's content hash): writing it again", damage)
            storage.write_manifest(out_dir)
        meta = read_meta(out_dir)
        return paths(os.path.abspath(out_dir), meta["domains"], meta.get("dev_domains", ()))
    for damage in storage.verify_manifest(out_dir).damaged:
        log.warning("%s; generating the task again from its seed", damage)
    return generate(out_dir, seed, **options)


def _define_flags() -> flags.FlagValues:
    """--out, --seed and one flag per SyntheticOptions field."""
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "output directory", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "generator seed (same seed and options: byte-identical files)", flag_values=fv)
    for field in dataclasses.fields(SyntheticOptions):
        define = flags.DEFINE_boolean if field.type in (bool, "bool") else flags.DEFINE_integer
        define(field.name, field.default, f"SyntheticOptions.{field.name}", flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)
    define_help(fv)
    return fv


FLAGS = _define_flags()


def _command(f: flags.FlagValues) -> str:
    options = {field.name: f[field.name].value for field in dataclasses.fields(SyntheticOptions)}
    with workdir_lock.held(f.out, "--out", inside=False):  # issue 24: one writer per output
        result = generate(f.out, f.seed, **options)
    meta = read_meta(f.out)
    return json.dumps({"paths": result, "counts": meta["counts"], "token_lengths": meta["token_lengths"]}, indent=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Prints the paths, counts and token
    lengths as JSON; returns the exit status (a bad option raises, as any error does)."""
    return run_cli(FLAGS, _command, argv, allow_arguments=False, expected_errors=(workdir_lock.LockError,))


if __name__ == "__main__":
    sys.exit(main())
