"""Reader of a Hugging Face `Dataset.save_to_disk` directory, with pyarrow only.

Layout written by `datasets`: a Dataset directory holds `state.json` (its `_data_files`
lists the Arrow stream files in order) and `dataset_info.json`; a DatasetDict directory
holds `dataset_dict.json` ({"splits": [...]}) and one Dataset directory per split. The
Arrow files are memory-mapped, so opening costs little memory. The `datasets` package is
not needed.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, List, Tuple

import numpy as np

from laser_jax.data.errors import Problem
from laser_jax.data.record_source import Decoded

REQUIRED_COLUMNS = ("query", "prompt", "positive_passages", "negative_passages")
_SCAN_CHUNK = 1024


def is_hf_disk_dir(path: str) -> bool:
    """True if `path` is a `save_to_disk` Dataset or DatasetDict directory."""
    return any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


class HFDiskReader:
    """Raw rows (dicts) of a `save_to_disk` directory; locations are dataset row indices.

    Args:
      path: the Dataset directory, or a DatasetDict directory.
      split: the split to read from a DatasetDict directory.
    """

    def __init__(self, path: str, split: str = "train"):
        import pyarrow as pa

        self._problems: List[Problem] = []
        self._tables = []
        self.notes = ()
        self.description = path
        if os.path.isfile(os.path.join(path, "dataset_dict.json")):
            with open(os.path.join(path, "dataset_dict.json")) as fh:
                splits = json.load(fh).get("splits", [])
            if split not in splits:
                self._problems.append(Problem(path, "", None, f"split '{split}' not found; "
                                                              f"available: {splits}"))
                self._starts = np.zeros(1, np.int64)
                return
            path = os.path.join(path, split)
            self.description = path
        self._dir = path
        try:
            with open(os.path.join(path, "state.json")) as fh:
                files = [f["filename"] for f in json.load(fh)["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._problems.append(Problem(path, "state.json", None, f"unreadable: {e}"))
            files = []
        for name in files:
            full = os.path.join(path, name)
            try:
                self._tables.append(pa.ipc.open_stream(pa.memory_map(full)).read_all())
            except (OSError, pa.ArrowInvalid) as e:
                self._problems.append(Problem(full, "", None, f"cannot read Arrow file: {e}"))
        lengths = [t.num_rows for t in self._tables]
        self._starts = np.cumsum([0] + lengths).astype(np.int64)
        if self._tables:
            names = set(self._tables[0].column_names)
            for col in REQUIRED_COLUMNS:
                if col not in names:
                    self._problems.append(Problem(path, "", col, "no such column in the dataset"))
        if not self._problems and self._starts[-1] == 0:
            self._problems.append(Problem(path, "", None, "dataset is empty (no rows)"))

    def file_problems(self) -> List[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        index = 0
        for table in self._tables:
            for batch in table.to_batches(max_chunksize=_SCAN_CHUNK):
                for row in batch.to_pylist():
                    yield index, row
                    index += 1

    def read(self, index: int) -> Decoded:
        if not 0 <= index < len(self):
            raise IndexError(index)
        t = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._tables[t].slice(index - int(self._starts[t]), 1).to_pylist()[0]

    def where(self, index: int) -> Tuple[str, str]:
        return self._dir, f"row {index}"
