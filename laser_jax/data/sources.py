"""`open_records`: ReasonEmb records from any supported source (JSONL, Hugging Face
`save_to_disk`, ArrayRecord, TFDS), validated, behind one `RecordSource`."""
from __future__ import annotations

import os

from laser_jax.data.array_record_source import ArrayRecordReader
from laser_jax.data.hf_disk_source import HFDiskReader, is_hf_disk_dir
from laser_jax.data.jsonl_source import JsonlReader
from laser_jax.data.record_source import RecordSource


def open_records(path: str, group_size: int = 1, skip_bad_records: bool = False,
                 require_reasoning: bool = True, split: str = "train", validate: bool = True):
    """Open ReasonEmb records from any supported source, validated.

    Args:
      path: a JSONL file or glob (files concatenated in sorted order); a Hugging Face
        `save_to_disk` directory (a DatasetDict directory needs `split`); a prepared TFDS
        dataset directory (holding features.json, see `tfds_reasonemb`); or a path/glob
        ending in `.array_record` (records stored as JSON bytes).
      group_size: documents per query G (G > 1 requires negatives).
      skip_bad_records: skip invalid records (reported in `source.summary`) instead of
        raising.
      require_reasoning: a record without reasoning is an error (see `parse_record`).
      split: the split of a DatasetDict or TFDS directory.
      validate: check every record when opening (always done for JSONL); if False,
        a bad record raises `DataError` when it is read.

    Returns:
      A `RecordSource` (len / getitem -> `Record`, `.summary`, `.location(i)`).

    Raises:
      DataError: listing every problem found (unless skip_bad_records).
    """
    if os.path.isdir(path) and is_hf_disk_dir(path):
        reader = HFDiskReader(path, split=split)
    elif os.path.isfile(os.path.join(path, "features.json")):
        # Deferred: the TFDS reader imports tensorflow_datasets, an optional heavy dependency.
        from laser_jax.data.tfds_source import TfdsReader

        reader = TfdsReader(path, split=split)
    elif path.endswith(".array_record"):
        reader = ArrayRecordReader(path)
    else:
        reader = JsonlReader(path)
        validate = True
    return RecordSource(reader, group_size=group_size, skip_bad_records=skip_bad_records,
                        require_reasoning=require_reasoning, validate=validate)
