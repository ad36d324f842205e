"""`Builder`: a TFDS GeneratorBasedBuilder writing validated ReasonEmb records.

    builder = prepare("data/*.jsonl", data_dir="tfds_data", config_name="mydata")
    source = open_records(builder.data_dir)          # a RecordSource for the pipeline

Only the ArrayRecord file format works without TensorFlow: preparing
(`download_and_prepare`) and reading (`as_data_source`, `tfds.data_source`,
`grain.MapDataset.source`) do, `tfds.load` / `as_dataset` do not. Shuffling at write
time is disabled, so records keep their input order. TFDS hands text back as UTF-8 bytes;
`laser_jax.data.tfds_source.TfdsReader` decodes it and validates like every other source.
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from laser_jax.data.sources import open_records
from laser_jax.data.tfds_source import LIST_FIELDS, TEXT_FIELDS


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
