"""The one shape of every command line (train, plan, export, export_hf, evaluate, the data
and experiment commands).

Each command module keeps its flags on a private `absl.flags.FlagValues` (so importing one
never clashes with another's flags, and commands run side by side in one process, as the
tests and the ablation script do) and its `main(argv=None) -> int` returns
`run_cli(FLAGS, body, argv)`; `if __name__ == "__main__": sys.exit(main())`. `run_cli`
parses the flags, prints usage errors and expected failures as one "error: ..." line, and
turns the outcome into an exit status.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, Tuple, Type, Union

from absl import flags, logging

EXIT_USAGE = 2  # a usage error or an expected failure (bad input named in the message)


def define_help(flag_values: flags.FlagValues) -> None:
    """--help / -h on `flag_values` (`run_cli` prints the command's usage for it)."""
    flags.DEFINE_boolean("help", False, "Show this help.", flag_values=flag_values, short_name="h")


def run_cli(flag_values: flags.FlagValues, run: Callable[[flags.FlagValues], Union[None, str, int]],
            argv: Optional[Sequence[str]] = None, *, as_absl_app: bool = False, allow_arguments: bool = True,
            expected_errors: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError)) -> int:
    """Parse `argv` (argv[0] is the program name; default sys.argv) into `flag_values` and
    call `run(flag_values)`.

    Args:
      flag_values: the command's flags (with a `help` flag, see `define_help`).
      run: the command's body. It returns None, a text to print, or an int exit status.
      argv: the command line.
      as_absl_app: as under `absl.app.run`: Python logging at INFO goes to stderr in absl's
        format (training and planning log their progress so), and absl's global flags are
        marked parsed (libraries such as grain read them; they keep their defaults).
      allow_arguments: False makes positional arguments after the program name a usage error.
      expected_errors: exceptions of `run` reported as one "error: ..." line with exit
        status 2 (bad input named in the message); anything else propagates (traceback).

    Returns:
      0 on success (or `run`'s own status), 2 on a usage error or an expected error.
    """
    argv = list(sys.argv if argv is None else argv)
    flag_values.unparse_flags()
    if any(a in ("-h", "--help") for a in argv[1:]):  # before parsing: required flags may be missing
        print(flag_values.get_help(include_special_flags=False))
        return 0
    try:
        rest = flag_values(argv)
        _check_config_files(flag_values)
    except flags.Error as e:
        print(_usage_error(e, argv, flag_values), file=sys.stderr)
        return EXIT_USAGE
    except (AttributeError, KeyError, OSError) as e:  # a config file or --config.a.b override (below)
        print(_config_error(e, argv), file=sys.stderr)
        return EXIT_USAGE
    if flag_values.help:
        print(flag_values.get_help(include_special_flags=False))
        return 0
    if len(rest) > 1 and not allow_arguments:
        print(f"error: unexpected arguments: {rest[1:]}\n\n{flag_values.get_help(include_special_flags=False)}", file=sys.stderr)
        return EXIT_USAGE
    if as_absl_app:
        logging.use_absl_handler()
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.INFO)
    try:
        outcome = run(flag_values)
    except expected_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        return outcome
    if outcome is not None:
        print(outcome)
    return 0


def _check_config_files(flag_values: flags.FlagValues) -> None:
    """Raise the OSError of a config file that did not load (ml_collections keeps it until the
    config is first read, and its message then names no file)."""
    for name in list(flag_values):
        flag = flag_values[name]
        if flag.value is not None and getattr(flag.parser, "flag_type", lambda: "")() == "config object":
            try:
                flag.value.keys
            except OSError as e:
                raise _ConfigFileError(f"--{name}={flag.serialize().split('=', 1)[-1]}: cannot read the "
                                       f"config file: {_last_line(str(e.__cause__ or e))}") from e


class _ConfigFileError(OSError):
    pass


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _config_error(e: BaseException, argv: Sequence[str]) -> str:
    """One "error: ..." line for a config that did not load: a missing file, or an override
    `--config.a.b=v` naming no field (with ml_collections' "did you mean" suggestion)."""
    if isinstance(e, _ConfigFileError):
        return f"error: {e}"
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(text))
        e = e.args[0]
    text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    if isinstance(e, OSError):  # an override after a config file that did not load
        return f"error: cannot read the config file: {_last_line(str(e.__cause__ or e))}"
    key, _, hint = text.strip().partition("\n")
    key = key.strip("'\"")
    overrides = [a for a in argv[1:] if a.lstrip("-").startswith("config.")]
    named = [a for a in overrides if key in a.split("=", 1)[0].lstrip("-").split(".")[1:]] or overrides
    where = named[0] if named else "--config"
    field = where.split("=", 1)[0].lstrip("-").partition(".")[2]
    unknown = "" if field.rpartition(".")[2] == key else f" ({key!r} unknown)"
    return f"error: {where}: no config field {field or key}{unknown}{'; ' + hint[:1].lower() + hint[1:] if hint else ''}"


def _usage_error(e: flags.Error, argv: Sequence[str], flag_values: flags.FlagValues) -> str:
    """One "error: ..." for a flag that did not parse; a `--config.a.b` override naming no
    config field is said to be so, without the usage text; a config file whose get_config
    raised (an unknown variant) gives its error's last line."""
    text = str(e)
    if "Error whilst parsing config file" in text:
        where = text.split(": Error whilst parsing config file", 1)[0].replace("flag ", "", 1)
        return f"error: {where}: {_last_line(text).split(': ', 1)[-1]}"
    if text.startswith("flag --config."):  # an override's value of the wrong type: no usage text
        return f"error: {text[len('flag '):]}"
    cause = e.__cause__ or e.__context__
    if isinstance(cause, (AttributeError, KeyError)) or "AttributeError" in text or "KeyError" in text:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        if bad:
            return f"error: unknown config field in {' '.join(bad)}: {text}"
    return f"error: {text}\n\n{flag_values.get_help(include_special_flags=False)}"
