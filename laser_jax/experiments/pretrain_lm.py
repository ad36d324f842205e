"""An ablation's one pretrained LM: the pretraining stage of `python -m laser_jax.train` alone.

    python -m laser_jax.experiments.pretrain_lm --config=configs/tiny.py --task_dir=RUNS/data \\
        --out=RUNS/lm [--config.pretrain.num_steps=N ...]

Trains the config's causal-LM pretraining stage (the `pretrain` section, train/stages.py) on
the generated task in --task_dir and writes the LM into --out: a Hugging Face directory with
its stage.json (stage fingerprint) and lm_eval.json (greedy end-number accuracy on eval/).
As in the two-stage default, a finished LM of the same stage config and task is reused, an
interrupted one resumed, a stale one replaced. `ablate` runs this as one job before the
variants, which all start from --out (`model.init_from`).

The whole stage runs under an exclusive lock on OUT.lock (beside --out): a second command on
the same --out (for example another ablation on the same RUNS) waits for the first to finish,
then reuses its LM, so two jobs never write one LM directory.

Exit codes: 0 done; 2 bad config, task or directory; otherwise the training's
(docs/faults.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data import synthetic
from laser_jax.data.errors import ConfigError
from laser_jax.train import faults, stages
from laser_jax.train.config import validate
from laser_jax.train.main import quiet_libraries, train_main

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:variant]) with a pretrain section.",
                                flag_values=FLAGS, lock_config=True)
flags.DEFINE_string("task_dir", None, "a generated task (laser_jax.data.synthetic)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "the LM's directory", flag_values=FLAGS)
for _name in ("config", "task_dir", "out"):
    flags.mark_flag_as_required(_name, flag_values=FLAGS)
define_help(FLAGS)


@contextlib.contextmanager
def exclusive(path: str, say=print):
    """Hold an exclusive advisory lock on `path` (created when missing) for the block; when
    another process holds it, say so and wait for it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"[pretrain_lm] another job holds {path} (it is training this LM): waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretrain_into(config, task_dir: str, out: str, config_file: Optional[str] = None) -> int:
    """Train (resume, reuse) the config's LM on the task in `task_dir` into `out`; exit code."""
    meta = synthetic.read_meta(task_dir)
    if meta is None:
        raise FileNotFoundError(f"--task_dir: {task_dir} holds no generated task (meta.json)")
    task = synthetic.paths_from_meta(os.path.abspath(task_dir), meta)
    config = config.copy_and_resolve_references()
    if config.get("pretrain") is None or config.pretrain.num_steps <= 0:
        raise ConfigError("pretrain.num_steps: the config has no pretraining stage (set it > 0)")
    config.pretrain.dir = out
    validate(config)
    with exclusive(out + ".lock", lambda line: print(line, file=sys.stderr, flush=True)):
        code, _ = stages.pretrain(config, os.path.dirname(out), lambda c, d: train_main(c, d, config_file), task)
    return code


def _command(f: flags.FlagValues) -> int:
    quiet_libraries()
    try:
        return pretrain_into(f.config, f.task_dir, os.path.abspath(f.out), f["config"].config_filename)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return faults.EXIT_BAD_INPUT


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, _command, argv, as_absl_app=True, allow_arguments=False, expected_errors=())


if __name__ == "__main__":
    sys.exit(main())
