"""Reading a prepared TFDS ReasonEmb dataset directory (ArrayRecord files, no TensorFlow).

The writer is `laser_jax.data.tfds_reasonemb.prepare`. TFDS hands text back as UTF-8
bytes; `TfdsReader` decodes it and validates like every other source.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import tensorflow_datasets as tfds

from laser_jax.data.errors import Problem
from laser_jax.data.record_source import Decoded, DecodeFailure, RecordSource

TEXT_FIELDS = ("query", "prompt", "reasoning_query")
LIST_FIELDS = ("positive_passages", "negative_passages")


def _decode(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            return DecodeFailure(f"not valid UTF-8 at byte offset {e.start}")
    return value


class TfdsReader:
    """Raw entries (dicts of str) of one split of a prepared TFDS dataset directory.

    Args:
      dataset_dir: the directory holding dataset_info.json / features.json.
      split: the split to read.
    """

    def __init__(self, dataset_dir: str, split: str = "train"):
        self.description = f"{dataset_dir} [{split}]"
        self.notes = ()
        self._dir = str(dataset_dir)
        self._problems: List[Problem] = []
        self._data = []
        try:
            builder = tfds.builder_from_directory(self._dir)
            self._data = builder.as_data_source(split=split)
        except Exception as e:  # TFDS raises many types here; all mean "cannot read"
            self._problems.append(Problem(self._dir, "", None, f"not a readable TFDS dataset "
                                                               f"(split '{split}'): {e}"))
        if not self._problems and len(self._data) == 0:
            self._problems.append(Problem(self._dir, "", None, "dataset is empty (no records)"))

    def file_problems(self) -> List[Problem]:
        return list(self._problems)

    def __len__(self) -> int:
        return len(self._data)

    def scan(self) -> Iterator[Tuple[int, Decoded]]:
        for index in range(len(self)):
            yield index, self.read(index)

    def read(self, index: int) -> Decoded:
        row = self._data[index]
        out = {}
        for key, value in row.items():
            value = [_decode(v) for v in value] if key in LIST_FIELDS else _decode(value)
            bad = [v for v in (value if isinstance(value, list) else [value])
                   if isinstance(v, DecodeFailure)]
            if bad:
                return DecodeFailure(f"field '{key}': {bad[0].message}")
            out[key] = value
        return out

    def where(self, index: int) -> Tuple[str, str]:
        return self._dir, f"record {index}"


def open_tfds_records(dataset_dir: str, split: str = "train", group_size: int = 1,
                      skip_bad_records: bool = False, require_reasoning: bool = True
                      ) -> RecordSource:
    """A validated `RecordSource` over a prepared TFDS dataset directory.

    Args:
      dataset_dir: e.g. `prepare(...).data_dir`.
      split: the split.
      group_size, skip_bad_records, require_reasoning: as in `open_records`.

    Returns:
      A RecordSource of `Record`s in the order they were written.
    """
    return RecordSource(TfdsReader(dataset_dir, split), group_size=group_size,
                        skip_bad_records=skip_bad_records, require_reasoning=require_reasoning)
