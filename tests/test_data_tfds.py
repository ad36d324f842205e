"""The TFDS builder (ArrayRecord, no TensorFlow) keeps the records, in order."""
import json

import pytest

pytest.importorskip("importlib_resources")   # tensorflow_datasets' builders need it
tfds_reasonemb = pytest.importorskip("laser_jax.data.tfds_reasonemb")

from laser_jax.data.errors import DataError  # noqa: E402
from laser_jax.data.sources import open_records  # noqa: E402


def raw_records(n=6):
    return [{"query": f"q{i} é", "prompt": "Find.", "reasoning_query": f"a{i}.\n\nb\n\nc",
             "positive_passages": [{"text": f"p{i}", "title": "T"}],
             "negative_passages": [f"n{i}.{k}" for k in range(i % 3)]} for i in range(n)]


def test_builder_round_trip_in_order(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw_records()))
    expected = open_records(str(path), group_size=1)
    builder = tfds_reasonemb.prepare(str(path), str(tmp_path / "tfds"), config_name="t",
                                     group_size=1)
    source = tfds_reasonemb.open_tfds_records(builder.data_dir)
    assert [source[i] for i in range(len(source))] == [expected[i] for i in range(6)]
    assert source[0].negatives == () and source[2].positives == ("T p2",)
    assert source.location(4) == f"{builder.data_dir}: record 4"
    assert [r for r in open_records(builder.data_dir)] == [r for r in source]
    import grain
    assert len(grain.MapDataset.source(source)) == 6


def test_builder_refuses_bad_input(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(raw_records(1)[0] | {"query": ""}) + "\n")
    with pytest.raises(DataError, match=r"in\.jsonl: line 1: field 'query'"):
        tfds_reasonemb.prepare(str(path), str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="not a readable TFDS dataset"):
        tfds_reasonemb.open_tfds_records(str(tmp_path / "nothing"))
