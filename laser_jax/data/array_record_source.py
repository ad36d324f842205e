"""ArrayRecord storage of ReasonEmb records (one JSON object, UTF-8, per record).

Reading goes through `grain.sources.ArrayRecordDataSource` (random access, no TensorFlow);
writing through `array_record`'s `ArrayRecordWriter` with `group_size:1`, the setting
for fast random access.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator, List, Tuple

import grain
import numpy as np

from laser_jax.data.errors import Problem
from laser_jax.data.paths import expand_files
from laser_jax.data.jsonl import Decoded, decode_json_bytes


class ArrayRecordReader:
    """Raw entries of one or more ArrayRecord files (a path or a glob, sorted order).

    Args:
      pattern: file path or glob.
    """

    def __init__(self, pattern: str):
        self.description = pattern
        self.notes = ()
        self._files, self._problems = expand_files(pattern)
        self._sources = []
        for path in self._files:
            try:
                source = grain.sources.ArrayRecordDataSource([path])
                count = len(source)
            except (RuntimeError, OSError, ValueError) as e:
                self._problems.append(Problem(path, "", None, f"not a readable ArrayRecord "
                                                              f"file: {e}"))
                continue
            if count == 0:
                self._problems.append(Problem(path, "", None, "file is empty (no records)"))
            self._sources.append(source)
        self._starts = np.cumsum([0] + [len(s) for s in self._sources]).astype(np.int64)

    def file_problems(self) -> List[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> Tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f, index - int(self._starts[f])

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        for index in range(len(self)):
            yield index, self.read(index)

    def read(self, index: int) -> Decoded:
        f, k = self._locate(index)
        return decode_json_bytes(self._sources[f][k])

    def where(self, index: int) -> Tuple[str, str]:
        f, k = self._locate(index)
        return self._files[f], f"record {k}"


def write_array_record(records: Iterable[dict], path: str) -> int:
    """Write JSON-serialisable records to one ArrayRecord file.

    Args:
      records: the records (e.g. `Record.to_json()` values).
      path: the output file (conventionally ending in `.array_record`).

    Returns:
      The number of records written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(path, "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    return count
