"""Reader of JSONL training files (one JSON object per line), random access by byte offset.

Lines are read and decoded by `laser_jax.data.jsonl`. Only the byte offset of each line
is kept in memory; a record is re-read from disk when it is asked for, so large files
cost little memory. Blank lines are ignored and counted in the load summary's notes;
every other line is one raw entry.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np

from laser_jax.data import jsonl
from laser_jax.data.errors import Problem
from laser_jax.data.jsonl import Decoded
from laser_jax.data.paths import expand_files


class JsonlReader:
    """Raw entries of one or more JSONL files (a path or a glob, sorted order).

    Args:
      pattern: file path or glob.
    """

    def __init__(self, pattern: str):
        self.description = pattern
        self._files, self._problems = expand_files(pattern)
        file_ids: List[int] = []
        lines: List[int] = []
        offsets: List[int] = []
        blank: List[str] = []
        for f, path in enumerate(self._files):
            count = 0
            with open(path, "rb") as fh:
                for line in jsonl.lines(fh):
                    if line.blank:
                        blank.append(f"{path}: line {line.number}")
                        continue
                    file_ids.append(f)
                    lines.append(line.number)
                    offsets.append(line.offset)
                    count += 1
            if count == 0:
                self._problems.append(Problem(path, "", None, "file is empty (no records)"))
        self._file_ids = np.asarray(file_ids, np.int32)
        self._lines = np.asarray(lines, np.int64)
        self._offsets = np.asarray(offsets, np.int64)
        self.notes = ()
        if blank:
            shown = ", ".join(blank[:5]) + (f" and {len(blank) - 5} more" if len(blank) > 5 else "")
            self.notes = (f"ignored {len(blank)} blank line(s): {shown}",)

    def file_problems(self) -> List[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return len(self._lines)

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        index = 0
        for path in self._files:
            with open(path, "rb") as fh:
                for line in jsonl.lines(fh):
                    if not line.blank:
                        yield index, jsonl.decode_line(line)
                        index += 1

    def read(self, index: int) -> Decoded:
        path = self._files[self._file_ids[index]]
        offset = int(self._offsets[index])
        with open(path, "rb") as fh:
            fh.seek(offset)
            return jsonl.decode_line(jsonl.Line(int(self._lines[index]), offset, fh.readline()))

    def where(self, index: int) -> Tuple[str, str]:
        return self._files[self._file_ids[index]], f"line {int(self._lines[index])}"
