"""The input of `laser_jax.export`: a JSONL file of {"id", "text"} objects.

`scan_input` is the first pass: it validates every line (through `laser_jax.data.jsonl`:
JSON, fields, types; then duplicate ids), counts the records, hashes the file and notes
where each chunk of records starts (byte offset and line number), so `read_records` can
later read any chunk alone. Every problem is a `laser_jax.data.errors.DataError` naming the
file, the line and the field.
"""
from __future__ import annotations

import array
import dataclasses
import hashlib
import os
from typing import Dict, Iterator, List, Tuple

import numpy as np
from absl import logging

from laser_jax.data import jsonl
from laser_jax.data.errors import DataError

__all__ = ["InputIndex", "parse_record", "scan_input", "read_records"]


def parse_record(path: str, line: jsonl.Line) -> Tuple[str, str]:
    """(id, text) of one non-blank line, or DataError."""
    record = jsonl.parse_object(path, line)
    rid = jsonl.get_id(path, line.number, record, "id")
    if "\n" in rid or "\r" in rid:
        raise DataError.at(path, f"id {rid!r} contains a line break (ids files hold one id per line)",
                           line.number, "id")
    return rid, jsonl.get_text(path, line.number, record, "text")


def _id_hash(rid: str) -> int:
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "little")


@dataclasses.dataclass
class InputIndex:
    """What the first pass learnt about an input file.

    Attributes:
      path: the file.
      size, mtime_ns: its stat when scanned.
      sha256: hex digest of its bytes.
      num_records: records (non-blank lines).
      chunk_size: records per chunk.
      chunk_offsets: [C] byte offset of each chunk's first record.
      chunk_lines: [C] 1-based line number of each chunk's first record.
    """
    path: str
    size: int
    mtime_ns: int
    sha256: str
    num_records: int
    chunk_size: int
    chunk_offsets: List[int]
    chunk_lines: List[int]

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_offsets)

    def chunk_rows(self, c: int) -> Tuple[int, int]:
        """[start, stop) record rows of chunk c."""
        return c * self.chunk_size, min((c + 1) * self.chunk_size, self.num_records)

    def fingerprint(self) -> dict:
        """What identifies the input's content (not its path)."""
        return {"sha256": self.sha256, "size": self.size, "num_records": self.num_records}


def scan_input(path: str, chunk_size: int) -> InputIndex:
    """First pass: validate every line, count records, find chunk starts, hash the file.

    Memory: 8 bytes per record (a 64-bit hash of each id, for the duplicate check).

    Args:
      path: JSONL file of {"id", "text"} objects.
      chunk_size: records per chunk (>= 1).

    Returns:
      InputIndex.

    Raises:
      DataError naming file, line and field of the first problem; FileNotFoundError.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: input file not found")
    stat = os.stat(path)
    digest = hashlib.sha256()
    hashes = array.array("Q")
    offsets, lines = [], []
    empty_texts, first_empty = 0, None
    with open(path, "rb") as f:
        for line in jsonl.lines(f):
            digest.update(line.raw)
            if line.blank:
                continue
            rid, text = parse_record(path, line)
            if len(hashes) % chunk_size == 0:
                offsets.append(line.offset)
                lines.append(line.number)
            hashes.append(_id_hash(rid))
            if not text.strip():
                empty_texts += 1
                first_empty = first_empty or line.number
    if not hashes:
        raise DataError.at(path, "no records (the file is empty or blank)")
    _check_duplicates(path, np.frombuffer(hashes, np.uint64))
    if empty_texts:
        logging.warning("%s: %d record(s) have an empty text (first on line %d); they are encoded "
                        "as given", path, empty_texts, first_empty)
    return InputIndex(path, stat.st_size, stat.st_mtime_ns, digest.hexdigest(), len(hashes),
                      chunk_size, offsets, lines)


def _check_duplicates(path: str, hashes: np.ndarray) -> None:
    """Raise for the first repeated id (by line); equal hashes are confirmed on the ids."""
    order = np.sort(hashes)
    suspects = set(order[1:][order[1:] == order[:-1]].tolist())
    if not suspects:
        return
    first: Dict[str, int] = {}
    with open(path, "rb") as f:
        for line in jsonl.lines(f):
            if line.blank:
                continue
            rid, _ = parse_record(path, line)
            if _id_hash(rid) not in suspects:
                continue
            if rid in first:
                raise DataError.at(path, f"duplicate id {rid!r} (first on line {first[rid]})", line.number, "id")
            first[rid] = line.number


def read_records(index: InputIndex, first_chunk: int, num_chunks: int = 1) -> Iterator[Tuple[str, str]]:
    """Yield (id, text) of chunks [first_chunk, first_chunk + num_chunks), reading only those."""
    if num_chunks <= 0 or first_chunk >= index.num_chunks:
        return
    count = index.chunk_rows(min(first_chunk + num_chunks, index.num_chunks) - 1)[1] - \
        index.chunk_rows(first_chunk)[0]
    with open(index.path, "rb") as f:
        offset = index.chunk_offsets[first_chunk]
        f.seek(offset)
        for line in jsonl.lines(f, index.chunk_lines[first_chunk], offset):
            if line.blank:
                continue
            yield parse_record(index.path, line)
            count -= 1
            if count == 0:
                return
    raise DataError.at(index.path, "the file became shorter while exporting")
