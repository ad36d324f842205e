"""Train a LaSER retriever.

    python -m laser_jax.train --config=configs/qwen3_0p6b.py --workdir=runs/q06 [--config.train.num_steps=100]

Any config field can be overridden as `--config.a.b=value`. Rerunning with the same
workdir resumes from its newest checkpoint. With `data.eval_dir` set, the trained model is
evaluated at the end and a table printed (the embedded default does this).
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
    from laser_jax.data.errors import ConfigError, DataError
    from laser_jax.run_config import validate

    config = _CONFIG.value
    workdir = os.path.abspath(_WORKDIR.value) if "://" not in _WORKDIR.value else _WORKDIR.value
    try:
        validate(config)
        from laser_jax.trainer import Trainer

        trainer = Trainer(config, workdir)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except Exception as e:
        from laser_jax.trainer import NonFiniteLossError

        if isinstance(e, NonFiniteLossError):
            print(f"error: {e}", file=sys.stderr)
            return 3
        raise
    if trainer._stop_signal is not None:
        return 128 + trainer._stop_signal
    if trainer.paths.eval_dir:
        from laser_jax.final_eval import evaluate_trained

        evaluate_trained(trainer)
    return 0


def run():
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
