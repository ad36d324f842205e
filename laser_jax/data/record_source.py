"""`RecordSource`: a validated, random-access view of raw records from any reader.

A reader (JSONL, Hugging Face `save_to_disk`, ArrayRecord) only knows how to find and
decode raw entries and where they are. `RecordSource` runs the validation pass over all of
them, raises one `DataError` listing every problem (or skips the bad records and says
which), and then serves `Record`s by index, which is what `grain.MapDataset.source` needs.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, Sequence, Tuple

import numpy as np

from laser_jax.data.errors import DataError, Problem
from laser_jax.data.jsonl import Decoded, DecodeFailure
from laser_jax.data.records import Record, parse_record

class Reader(Protocol):
    """What `RecordSource` needs from a storage format."""

    def file_problems(self) -> Sequence[Problem]:
        """Problems that make a whole input unusable (missing, empty, unreadable)."""

    def __len__(self) -> int:
        """Number of raw entries (valid or not)."""

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        """Sequential pass over all raw entries: (raw index, decoded value or failure)."""

    def read(self, index: int) -> Decoded:
        """Random access to one raw entry."""

    def where(self, index: int) -> Tuple[str, str]:
        """(source file or directory, location such as "line 3") of a raw entry."""


@dataclasses.dataclass(frozen=True)
class LoadSummary:
    """What loading did, for the trainer's log.

    Attributes:
      description: the path(s) the records came from.
      num_raw: raw entries found.
      num_records: records kept.
      skipped: the problems of every skipped record (empty unless skip_bad_records).
      skipped_where: "source: location" of every skipped record.
      notes: other things worth logging (e.g. ignored blank JSONL lines).
    """

    description: str
    num_raw: int
    num_records: int
    skipped: Tuple[Problem, ...] = ()
    skipped_where: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_where)

    def __str__(self) -> str:
        lines = [f"loaded {self.num_records} of {self.num_raw} records from {self.description}"]
        if self.skipped_where:
            shown = ", ".join(self.skipped_where[:10])
            more = f" and {self.num_skipped - 10} more" if self.num_skipped > 10 else ""
            lines.append(f"skipped {self.num_skipped} bad record(s): {shown}{more}")
            lines += [f"  - {p}" for p in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more problem(s)")
        lines += list(self.notes)
        return "\n".join(lines)


class RecordSource:
    """Validated records, random access (grain `RandomAccessDataSource` protocol).

    Args:
      reader: the storage reader.
      group_size: documents per query G (G > 1 requires negatives).
      skip_bad_records: skip invalid records (listed in `summary`) instead of raising.
      require_reasoning: a record without reasoning is an error.
      validate: run the validation pass now; if False every entry is assumed valid and a
        bad one raises `DataError` when read.

    Raises:
      DataError: for input-level problems (always) and bad records (unless skipping).
    """

    def __init__(self, reader: Reader, group_size: int = 1, skip_bad_records: bool = False,
                 require_reasoning: bool = True, validate: bool = True):
        self._reader = reader
        self._group_size = group_size
        self.group_size = group_size  # what the records were validated for
        self._require_reasoning = require_reasoning
        fatal = list(reader.file_problems())
        if fatal:
            raise DataError(fatal)
        problems, bad_where, keep = [], [], []
        if validate:
            for index, value in reader.scan():
                found = self._problems(index, value)
                if found:
                    problems += found
                    bad_where.append(": ".join(reader.where(index)))
                else:
                    keep.append(index)
        else:
            keep = range(len(reader))
        if problems and not skip_bad_records:
            raise DataError(problems)
        self._keep = np.asarray(keep, dtype=np.int64)
        self.summary = LoadSummary(
            description=getattr(reader, "description", type(reader).__name__),
            num_raw=len(reader), num_records=len(self._keep), skipped=tuple(problems),
            skipped_where=tuple(bad_where), notes=tuple(getattr(reader, "notes", ())))

    def _problems(self, index: int, value: Decoded) -> list:
        source, location = self._reader.where(index)
        if isinstance(value, DecodeFailure):
            return [Problem(source, location, None, value.message)]
        _, found = parse_record(value, self._group_size, self._require_reasoning)
        return [Problem(source, location, field or None, msg) for field, msg in found]

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, index: int) -> Record:
        raw = int(self._keep[index])
        value = self._reader.read(raw)
        if not isinstance(value, DecodeFailure):
            record, found = parse_record(value, self._group_size, self._require_reasoning)
            if record is not None:
                return record
        raise DataError(self._problems(raw, value))

    def location(self, index: int) -> str:
        """"file: line 12" (or row / record) of the record at `index` of this source."""
        return ": ".join(self._reader.where(int(self._keep[index])))

    def __repr__(self) -> str:
        return f"RecordSource({self.summary.description!r}, {len(self)} records)"
