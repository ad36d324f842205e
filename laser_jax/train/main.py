"""Train a LaSER retriever.

    python -m laser_jax.train --config=configs/qwen3_0p6b.py --workdir=runs/q06 [--config.train.num_steps=100]

Any config field can be overridden as `--config.a.b=value`. Rerunning with the same
workdir resumes from its newest checkpoint. With `data.eval_dir` set, the trained model is
evaluated at the end and a table printed (the embedded default does this).

Exit codes (docs/faults.md): 0 done; 1 unexpected error (traceback); 2 invalid config,
data or model directory, reported before training; 3 non-finite loss or gradient
(train.nonfinite=stop); 4 disk full; 128+N stopped by signal N after saving a checkpoint
(143 SIGTERM, 130 SIGINT): rerun the same command to resume.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:variant]).",
                                         lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the final model.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Join a multi-process JAX cluster (auto: when launched by one).")

log = logging.getLogger("laser_jax")


def parse_flags(argv):
    """absl flag parsing with config errors turned into one clear line naming the field."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        text = str(e)
        if isinstance(cause, (AttributeError, KeyError)) or "AttributeError" in text or "KeyError" in text:
            bad = [a for a in argv[1:] if a.startswith("--config.")]
            print(f"error: unknown config field in {' '.join(bad) or text}: {text}", file=sys.stderr)
        else:
            print(f"error: {text}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from laser_jax import distributed

    distributed.maybe_initialize(_DISTRIBUTED.value)
    workdir = os.path.abspath(_WORKDIR.value) if "://" not in _WORKDIR.value else _WORKDIR.value
    return train_main(_CONFIG.value, workdir)


def train_main(config, workdir: str) -> int:
    """Validate, set up and run; print one "error: ..." and return the exit code on the
    faults docs/faults.md lists (2 bad input, 3 non-finite, 4 disk full, 128+N signal N).
    Anything else propagates with its traceback (exit 1)."""
    from laser_jax.train import faults
    from laser_jax.train.checkpoint import CheckpointRestoreError, NonFiniteStateError
    from laser_jax.data.errors import ConfigError, DataError
    from laser_jax.model.hf_io import CheckpointMismatchError
    from laser_jax.train.config import validate

    def fail(code: int, e: BaseException) -> int:
        print(f"error: {e}", file=sys.stderr)
        return code

    with faults.StopSignals() as stop:  # installed first: a signal during set-up is not lost
        log.info("setting up the run in %s", workdir)
        try:
            validate(config)
            from laser_jax.train.trainer import Trainer

            trainer = Trainer(config, workdir, stop=stop)
        except (ConfigError, DataError, FileNotFoundError, NotADirectoryError, CheckpointMismatchError) as e:
            return fail(faults.EXIT_BAD_INPUT, e)
        except OSError as e:
            return fail(faults.EXIT_DISK_FULL if faults.is_disk_full(e) else faults.EXIT_BAD_INPUT, e)
        try:
            trainer.run()
        except (faults.NonFiniteLossError, NonFiniteStateError) as e:
            return fail(faults.EXIT_NONFINITE, e)
        except (CheckpointRestoreError, CheckpointMismatchError, DataError) as e:
            return fail(faults.EXIT_BAD_INPUT, e)
        except faults.DiskFullError as e:
            return fail(faults.EXIT_DISK_FULL, e)
        except Exception as e:
            if faults.is_disk_full(e):
                return fail(faults.EXIT_DISK_FULL, faults.disk_full_error(
                    workdir, "run outputs", "Checkpoints already written are intact. "))
            raise
        if stop.signum is not None:
            return faults.exit_code_for_signal(stop.signum)
    if trainer.paths.eval_dir:
        from laser_jax.train.final_eval import evaluate_trained

        evaluate_trained(trainer)
    return faults.EXIT_OK


def run():
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
