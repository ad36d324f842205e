"""Reader of JSONL files (one JSON object per line), random access by byte offset.

Only the byte offset of each line is kept in memory; a record is re-read from disk when
it is asked for, so large files cost little memory. Blank lines are ignored and counted
in the load summary's notes; every other line is one raw entry.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np

from laser_jax.data.errors import Problem
from laser_jax.data.paths import expand_files
from laser_jax.data.record_source import Decoded, decode_json_bytes

_BOM = b"\xef\xbb\xbf"


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
                offset = 0
                for line_no, line in enumerate(fh, start=1):
                    if line.strip():
                        file_ids.append(f)
                        lines.append(line_no)
                        offsets.append(offset)
                        count += 1
                    else:
                        blank.append(f"{path}: line {line_no}")
                    offset += len(line)
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

    def _decode(self, data: bytes, index: int) -> Decoded:
        if self._lines[index] == 1 and data.startswith(_BOM):
            data = data[len(_BOM):]
        return decode_json_bytes(data)

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        index = 0
        for path in self._files:
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield index, self._decode(line, index)
                        index += 1

    def read(self, index: int) -> Decoded:
        path = self._files[self._file_ids[index]]
        with open(path, "rb") as fh:
            fh.seek(int(self._offsets[index]))
            return self._decode(fh.readline(), index)

    def where(self, index: int) -> Tuple[str, str]:
        return self._files[self._file_ids[index]], f"line {int(self._lines[index])}"
