"""TFDS builder for ReasonEmb records (ArrayRecord files, no TensorFlow needed).

Kept in its own package folder because TFDS derives a builder's metadata from its
package (`dataset_info_from_configs` fails for a builder defined in a single script).
Importing this package imports `tensorflow_datasets`; nothing else in laser_jax does.
"""
from laser_jax.data.tfds_reasonemb.reasonemb_dataset_builder import Builder, ReasonEmbConfig, prepare
from laser_jax.data.tfds_source import TfdsReader, open_tfds_records

__all__ = ["Builder", "ReasonEmbConfig", "TfdsReader", "open_tfds_records", "prepare"]
