"""Validate ReasonEmb records and write them to one ArrayRecord file.

    python -m laser_jax.data.convert --input='data/*.jsonl' --output=train.array_record

The input is anything `open_records` reads (JSONL path or glob, Hugging Face
`save_to_disk` directory, ArrayRecord). Records are written normalised (passages as plain
strings, reasoning under `reasoning_query`) in input order. Invalid input stops the
conversion with the full list of problems (exit status 2) unless --skip_bad_records.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data.array_record_source import write_array_record
from laser_jax.data.errors import DataError
from laser_jax.data.sources import open_records

FLAGS = flags.FlagValues()
flags.DEFINE_string("input", None, "JSONL path/glob, save_to_disk dir, ...", flag_values=FLAGS)
flags.DEFINE_string("output", None, "output .array_record file", flag_values=FLAGS)
flags.DEFINE_integer("group_size", 2, "documents per query the data will be used with (G > 1 needs negatives)",
                     flag_values=FLAGS)
flags.DEFINE_boolean("skip_bad_records", False, "drop invalid records (they are listed) instead of failing",
                     flag_values=FLAGS)
flags.DEFINE_boolean("allow_missing_reasoning", False, "accept records without reasoning_query / reasoning_path",
                     flag_values=FLAGS)
flags.DEFINE_string("split", "train", "split of a DatasetDict directory", flag_values=FLAGS)
flags.mark_flags_as_required(["input", "output"], flag_values=FLAGS)
define_help(FLAGS)


def _command(f: flags.FlagValues) -> str:
    source = open_records(f.input, group_size=f.group_size, skip_bad_records=f.skip_bad_records,
                          require_reasoning=not f.allow_missing_reasoning, split=f.split)
    count = write_array_record((source[i].to_json() for i in range(len(source))), f.output)
    return f"{source.summary}\nwrote {count} records to {f.output}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the conversion (argv[0] is the program name); returns the process exit status
    (0 ok, 2 bad data or flags)."""
    return run_cli(FLAGS, _command, argv, allow_arguments=False, expected_errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
