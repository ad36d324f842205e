"""`Builder`: a TFDS GeneratorBasedBuilder writing validated ReasonEmb records.

    builder = prepare("data/*.jsonl", data_dir="tfds_data", config_name="mydata")
    source = open_tfds_records(builder.data_dir)     # a RecordSource for the pipeline

Only the ArrayRecord file format works without TensorFlow: preparing
(`download_and_prepare`) and reading (`as_data_source`, `tfds.data_source`,
`grain.MapDataset.source`) do, `tfds.load` / `as_dataset` do not. Shuffling at write
time is disabled, so records keep their input order. TFDS hands text back as UTF-8 bytes;
`TfdsReader` decodes it and validates like every other source.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, List, Tuple

import tensorflow_datasets as tfds

from laser_jax.data.errors import Problem
from laser_jax.data.record_source import Decoded, DecodeFailure, RecordSource
from laser_jax.data.records import open_records

TEXT_FIELDS = ("query", "prompt", "reasoning_query")
LIST_FIELDS = ("positive_passages", "negative_passages")


@dataclasses.dataclass
class ReasonEmbConfig(tfds.core.BuilderConfig):
    """Which input to convert.

    Attributes:
      input: anything `open_records` reads (JSONL path/glob, save_to_disk dir, ArrayRecord).
      group_size: documents per query the data is meant for (G > 1 needs negatives).
      skip_bad_records: drop invalid records instead of failing.
      require_reasoning: a record without reasoning is an error.
    """

    input: str = ""
    group_size: int = 2
    skip_bad_records: bool = False
    require_reasoning: bool = True


class Builder(tfds.core.GeneratorBasedBuilder):
    """ReasonEmb records: query, prompt, reasoning_query, positive/negative passages."""

    name = "reasonemb"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    # A placeholder: real conversions pass their own ReasonEmbConfig (see `prepare`).
    BUILDER_CONFIGS = [ReasonEmbConfig(name="unset")]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = {f: text for f in TEXT_FIELDS}
        features.update({f: tfds.features.Sequence(tfds.features.Text()) for f in LIST_FIELDS})
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              disable_shuffling=True)

    def _split_generators(self, dl_manager):
        config = self.builder_config
        if not config.input:
            raise ValueError("ReasonEmbConfig.input is empty: name the records to convert")
        source = open_records(config.input, group_size=config.group_size,
                              skip_bad_records=config.skip_bad_records,
                              require_reasoning=config.require_reasoning)
        return {"train": self._generate_examples(source)}

    def _generate_examples(self, source):
        for i in range(len(source)):
            yield i, source[i].to_json()


def prepare(input: str, data_dir: str, config_name: str = "default", group_size: int = 2,
            skip_bad_records: bool = False, require_reasoning: bool = True) -> Builder:
    """Validate `input` and write it as a TFDS dataset (ArrayRecord files).

    Args:
      input: records to convert (see `open_records`).
      data_dir: TFDS data directory; the dataset lands in
        data_dir/reasonemb/<config_name>/1.0.0.
      config_name: name of this conversion.
      group_size, skip_bad_records, require_reasoning: as in `open_records`.

    Returns:
      The prepared builder (`builder.data_dir` is the dataset directory).
    """
    config = ReasonEmbConfig(name=config_name, input=input, group_size=group_size,
                             skip_bad_records=skip_bad_records,
                             require_reasoning=require_reasoning)
    builder = Builder(data_dir=data_dir, config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder


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
