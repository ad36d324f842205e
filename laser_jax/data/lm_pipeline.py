"""The causal-LM data pipeline (train.objective=causal_lm): texts -> token rows -> batches.

Rows (each followed by the tokenizer's EOS id; a row longer than `max_len` keeps its start):
  - ReasonEmb records (any source `open_records` reads, and the synthetic task's train.jsonl):
    the query formatted exactly as the explicit view sees it, then its reasoning
    (`formatting.explicit_text(query text, reasoning, query)`, chat-wrapped when
    data.chat_template);
  - with data.synthetic also every corpus passage (corpus.jsonl `content`), so passages are
    mixed in at their natural share;
  - plain JSONL with a `text` field (data.lm_format=text, or auto when the first record has
    `text` and no `query`).

Every row is tokenized once at set-up (lengths are needed for length grouping). Batches
(`LMStepBatcher`): the batch of global step k depends on k alone, so a resumed run sees
exactly the batches an uninterrupted one would. Epoch e = k // steps_per_epoch orders the
rows by a permutation seeded with (seed, e); within windows of `sort_batches` global batches
the rows are sorted by length, cut into batches, and the epoch's batches shuffled (seeded
with (seed, e)); sort_batches=1 (the default) keeps the permutation's random batches:
length-homogeneous batches cut padding but made the tiny LM learn far slower (40.7% vs
99.7% greedy end-number accuracy after 1500 steps on the synthetic task). A batch is padded (left) to the smallest of a few widths (`widths`: length
quantiles of the rows) that holds its longest row, computed from the GLOBAL batch, so every
host pads to the same width. Each epoch drops its last N mod global_batch rows.

With data.lm_pack_len > 0 the rows are packed instead, several documents per fixed-length
row (data/lm_packing.py): no padding to speak of, and one batch shape.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import threading
from typing import Dict, List, Optional, Sequence

import grain
import numpy as np

from laser_jax.data.errors import ConfigError, DataError, Problem
from laser_jax.data.formatting import chat_wrap, explicit_text, format_query
from laser_jax.data.lm_packing import PackedStepBatcher
from laser_jax.data.tokenize import left_pad, pad_token_id, tokenize_texts

TEXT, REASONING, PASSAGE = 0, 1, 2  # row kinds
KIND_NAMES = {TEXT: "text", REASONING: "query+reasoning", PASSAGE: "passage"}


@dataclasses.dataclass(frozen=True)
class LMOptions:
    """What the LM batches are built with (see `lm_options`)."""

    batch_size: int  # rows per step on this host
    process_index: int = 0
    process_count: int = 1
    num_widths: int = 4
    sort_batches: int = 1
    pad_multiple: int = 1
    shuffle: bool = True
    seed: int = 0
    num_epochs: Optional[int] = None
    num_threads: int = 2
    prefetch: int = 4
    pack_len: int = 0  # > 0: packed rows of this many tokens (lm_packing.py)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.process_count


class LMSource:
    """Tokenized LM rows (EOS included) with their kind and origin.

    Attributes:
      rows: int32 arrays of token ids.
      kinds: int8 [N] TEXT | REASONING | PASSAGE.
      origins: where each row comes from ("FILE: line N", or "FILE: record I").
      truncated: rows cut at max_len.
    """

    def __init__(self, rows: List[np.ndarray], kinds: Sequence[int], origins: Sequence[str], truncated: int = 0):
        if not rows:
            raise DataError.at("data.train_files", "the causal-LM training data has no rows")
        self.rows = rows
        self.lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
        self.kinds = np.asarray(kinds, np.int8)
        self.origins = list(origins)
        self.truncated = truncated

    def __len__(self) -> int:
        return len(self.rows)

    def location(self, i: int) -> str:
        return self.origins[i]

    @property
    def summary(self) -> str:
        counts = {KIND_NAMES[k]: int(np.sum(self.kinds == k)) for k in KIND_NAMES if np.any(self.kinds == k)}
        return (f"{len(self)} LM rows {counts}, tokens per row mean {self.lengths.mean():.1f} max "
                f"{int(self.lengths.max())}" + (f", {self.truncated} truncated" if self.truncated else ""))


# ---------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------
def _files(pattern: str) -> List[str]:
    files = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
    if not files or not all(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"data.train_files: {pattern}: no such file")
    return files


def _first_json(pattern: str) -> Optional[dict]:
    for path in _files(pattern):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        return None
                    return obj if isinstance(obj, dict) else None
    return None


def detect_format(train_files: str, lm_format: str = "auto") -> str:
    """"text" or "reasonemb": `lm_format` unless auto; auto = text when `train_files` is
    JSONL whose first record has a `text` string and no `query`."""
    if lm_format != "auto":
        return lm_format
    is_jsonl = train_files.endswith((".jsonl", ".json")) or any(ch in train_files for ch in "*?[")
    if is_jsonl and not os.path.isdir(train_files):
        first = _first_json(train_files)
        if first is not None and isinstance(first.get("text"), str) and "query" not in first:
            return "text"
    return "reasonemb"


def read_text_jsonl(pattern: str):
    """[(text, "FILE: line N")] of JSONL records with a non-empty `text` string.

    Raises:
      DataError: naming every bad line (first 20).
    """
    out, problems = [], []
    for path in _files(pattern):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    problems.append(Problem(path, "", None, f"not JSON ({e})", n))
                    continue
                text = obj.get("text") if isinstance(obj, dict) else None
                if not isinstance(text, str) or not text:
                    problems.append(Problem(path, "", "text", "missing, empty or not a string", n))
                    continue
                out.append((text, f"{path}: line {n}"))
    if problems:
        raise DataError(problems)
    return out


def reasoning_texts(records, tokenizer, query_template: str, chat_template: bool) -> List[str]:
    """The explicit view's text of each record: formatted (and optionally chat-wrapped)
    query followed by its reasoning (the raw query when the reasoning is too short)."""
    texts = []
    for r in records:
        q = format_query(query_template, r.prompt, r.query)
        if chat_template:
            q = chat_wrap(tokenizer, q)
        texts.append(explicit_text(q, r.reasoning, r.query))
    return texts


def read_passages(corpus_path: str):
    """[(content, "FILE: line N")] of a synthetic task's corpus.jsonl."""
    out = []
    with open(corpus_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                out.append((json.loads(line)["content"], f"{corpus_path}: line {n}"))
    return out


def tokenize_rows(tokenizer, texts: Sequence[str], max_len: int):
    """(rows: int32 arrays of ids + EOS, number truncated). A row keeps its first
    max_len - 1 tokens, then EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("model.tokenizer: the tokenizer has no EOS token (causal-LM rows end with it)")
    ids = tokenize_texts(tokenizer, texts, max_len + 1)  # one extra token: tells truncated rows apart
    rows, cut = [], 0
    for r in ids:
        if len(r) > max_len - 1:
            r, cut = r[:max_len - 1], cut + 1
        rows.append(np.asarray(list(r) + [eos], np.int32))
    return rows, cut


def open_lm_source(config, train_files: str, tokenizer, synthetic_corpus: str = "") -> LMSource:
    """The LM rows of a run config (module doc).

    Args:
      config: the run config (data.* fields).
      train_files: the resolved training files.
      tokenizer: the run's tokenizer.
      synthetic_corpus: corpus.jsonl of the generated task whose passages join the rows.
    """
    from laser_jax.data.sources import open_records  # the record readers (grain, optional TFDS)

    d = config.data
    max_len = d.lm_max_len or d.explicit_max_len + 1
    fmt = detect_format(train_files, d.lm_format)
    if fmt == "text":
        items = read_text_jsonl(train_files)
        texts, kinds, origins = [t for t, _ in items], [TEXT] * len(items), [o for _, o in items]
    else:
        source = open_records(train_files, group_size=1, skip_bad_records=d.skip_bad_records)
        records = [source[i] for i in range(len(source))]
        texts = reasoning_texts(records, tokenizer, d.query_template, d.chat_template)
        kinds = [REASONING] * len(texts)
        locate = getattr(source, "location", None)
        origins = [locate(i) if locate else f"{train_files}: record {i}" for i in range(len(texts))]
    if synthetic_corpus:
        passages = read_passages(synthetic_corpus)
        texts += [t for t, _ in passages]
        kinds += [PASSAGE] * len(passages)
        origins += [o for _, o in passages]
    rows, cut = tokenize_rows(tokenizer, texts, max_len)
    return LMSource(rows, kinds, origins, cut)


# ---------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------
def widths(lengths: np.ndarray, num_widths: int, pad_multiple: int = 1) -> List[int]:
    """The padded widths: `num_widths` length quantiles (the last = the longest row),
    rounded up to `pad_multiple`."""
    qs = np.quantile(lengths, np.arange(1, num_widths + 1) / num_widths, method="higher")
    m = max(int(pad_multiple), 1)
    return sorted({int(-(-int(q) // m) * m) for q in qs})


def steps_per_epoch(num_rows: int, options: LMOptions) -> int:
    steps = num_rows // options.global_batch_size
    if steps == 0:
        raise ConfigError(f"train.batch_size: {num_rows} LM rows cannot fill one global batch of "
                          f"{options.global_batch_size}")
    return steps


class LMStepBatcher:
    """Global step -> this host's LM batch {"ids", "mask" int32 [B_host, W], "record" [B_host]}."""

    def __init__(self, source: LMSource, tokenizer, options: LMOptions):
        self.source, self.options = source, options
        self.pad_id = pad_token_id(tokenizer)
        self.steps_per_epoch = steps_per_epoch(len(source), options)
        self.widths = np.asarray(widths(source.lengths, options.num_widths, options.pad_multiple))
        self._lock = threading.Lock()
        self._cached = (None, None)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """int64 [steps_per_epoch, global_batch]: the row indices of every batch of an epoch."""
        with self._lock:
            if self._cached[0] == epoch:
                return self._cached[1]
        o = self.options
        n, gb = len(self.source), o.global_batch_size
        rng = np.random.default_rng([o.seed, epoch])
        order = rng.permutation(n) if o.shuffle else np.arange(n)
        order = order[:self.steps_per_epoch * gb]
        window = o.sort_batches * gb
        if o.sort_batches > 1:
            parts = []
            for s in range(0, len(order), window):
                part = order[s:s + window]
                parts.append(part[np.argsort(self.source.lengths[part], kind="stable")])
            order = np.concatenate(parts)
        batches = order.reshape(self.steps_per_epoch, gb)
        if o.shuffle and o.sort_batches > 1:
            batches = batches[rng.permutation(self.steps_per_epoch)]
        with self._lock:
            self._cached = (epoch, batches)
        return batches

    def width(self, rows: np.ndarray) -> int:
        longest = int(self.source.lengths[rows].max())
        return int(self.widths[np.searchsorted(self.widths, longest)])

    def __call__(self, step: int) -> Dict[str, np.ndarray]:
        o = self.options
        epoch, k = divmod(int(step), self.steps_per_epoch)
        rows = self.epoch_batches(epoch)[k]
        width = self.width(rows)
        host = rows[o.process_index * o.batch_size:(o.process_index + 1) * o.batch_size]
        ids, mask = left_pad([self.source.rows[i] for i in host], width, self.pad_id)
        return {"ids": ids, "mask": mask, "record": host.astype(np.int32)}


def step_batcher(source: LMSource, tokenizer, options: LMOptions):
    """step -> this host's batch: packed rows (options.pack_len > 0) or padded ones."""
    if options.pack_len:
        return PackedStepBatcher(source, pad_token_id(tokenizer), options)
    return LMStepBatcher(source, tokenizer, options)


def lm_train_iterator(source: LMSource, tokenizer, options: LMOptions, start_step: Optional[int] = None):
    """A checkpointable grain iterator over this host's LM batches (as `pipeline.train_iterator`)."""
    batcher = step_batcher(source, tokenizer, options)
    total = sys.maxsize if options.num_epochs is None else batcher.steps_per_epoch * options.num_epochs
    dataset = grain.MapDataset.range(total).map(batcher)
    read = grain.ReadOptions(num_threads=options.num_threads, prefetch_buffer_size=options.prefetch)
    iterator = iter(dataset.to_iter_dataset(read))
    if start_step:
        iterator.set_state({"next_index": int(start_step)})
    return iterator


def lm_options(config, process_index: int = 0, process_count: int = 1) -> LMOptions:
    """LMOptions of a run config."""
    d, t = config.data, config.train
    if t.batch_size % process_count:
        raise ConfigError(f"train.batch_size: {t.batch_size} rows do not split over {process_count} hosts")
    return LMOptions(batch_size=t.batch_size // process_count, process_index=process_index,
                     process_count=process_count, num_widths=d.lm_num_widths, sort_batches=d.lm_sort_batches,
                     pad_multiple=d.pad_multiple, shuffle=d.shuffle, seed=t.seed, num_threads=d.num_threads,
                     prefetch=d.prefetch, pack_len=d.get("lm_pack_len", 0))
