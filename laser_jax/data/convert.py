"""Validate ReasonEmb records and write them to one ArrayRecord file.

    python -m laser_jax.data.convert --input='data/*.jsonl' --output=train.array_record

The input is anything `open_records` reads (JSONL path or glob, Hugging Face
`save_to_disk` directory, ArrayRecord). Records are written normalised (passages as plain
strings, reasoning under `reasoning_query`) in input order. Invalid input stops the
conversion with the full list of problems (exit status 1) unless --skip_bad_records.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from laser_jax.data.array_record_source import write_array_record
from laser_jax.data.errors import DataError
from laser_jax.data.sources import open_records


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m laser_jax.data.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="JSONL path/glob, save_to_disk dir, ...")
    p.add_argument("--output", required=True, help="output .array_record file")
    p.add_argument("--group_size", type=int, default=2,
                   help="documents per query the data will be used with (G > 1 needs "
                        "negatives); default 2")
    p.add_argument("--skip_bad_records", action="store_true",
                   help="drop invalid records (they are listed) instead of failing")
    p.add_argument("--allow_missing_reasoning", action="store_true",
                   help="accept records without reasoning_query / reasoning_path")
    p.add_argument("--split", default="train", help="split of a DatasetDict directory")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the conversion; returns the process exit status (0 ok, 1 bad data)."""
    args = parse_args(argv)
    try:
        source = open_records(args.input, group_size=args.group_size,
                              skip_bad_records=args.skip_bad_records,
                              require_reasoning=not args.allow_missing_reasoning,
                              split=args.split)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    count = write_array_record((source[i].to_json() for i in range(len(source))), args.output)
    print(source.summary)
    print(f"wrote {count} records to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
