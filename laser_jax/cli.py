"""The shared shape of the inference command lines (export, export_hf, evaluate).

Each keeps its flags on a private `absl.flags.FlagValues`, so importing one never clashes
with another's flags; `run_cli` parses them, prints usage errors and expected failures as
one "error: ..." line, and turns the outcome into an exit status.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from absl import flags, logging


def run_cli(flag_values: flags.FlagValues, run: Callable[[flags.FlagValues], Optional[str]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Parse `argv` into `flag_values` and call `run(flag_values)`.

    Returns 0 on success (printing what `run` returns, if anything), 2 on a usage error,
    2 on a ValueError / FileNotFoundError (bad input named in the message), like training.
    """
    argv = list(sys.argv if argv is None else argv)
    flag_values.unparse_flags()
    try:
        flag_values(argv)
    except flags.Error as e:
        print(f"error: {e}\n\n{flag_values.get_help(include_special_flags=False)}", file=sys.stderr)
        return 2
    if flag_values.help:
        print(flag_values.get_help(include_special_flags=False))
        return 0
    logging.set_verbosity(logging.INFO)
    try:
        printed = run(flag_values)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if printed is not None:
        print(printed)
    return 0
