"""Train a LaSER retriever.

    python -m laser_jax.train --config=configs/qwen3_0p6b.py --workdir=runs/q06 [--config.train.num_steps=100]
    python -m laser_jax.train --config=configs/qwen3_0p6b.py --workdir=runs/q06 --check   # validate only

Any config field can be overridden as `--config.a.b=value`. Rerunning with the same
workdir resumes from its newest checkpoint (a finished run of the same config is not redone;
damaged files of a finished run are named and rebuilt: train/run_files.py). One run writes a
workdir at a time (laser_jax.workdir_lock): a second one exits 2 naming the holder;
`--force_unlock` takes a lock left by a run on another host. With `data.eval_dir` set, the trained model is
evaluated at the end and a table printed (the embedded default does this).

Exit codes (docs/faults.md): 0 done; 1 unexpected error (traceback); 2 invalid config,
data or model directory, reported before training (or a usage error); 3 non-finite loss or
gradient (train.nonfinite=stop); 4 disk full; 128+N stopped by signal N after saving a
checkpoint (143 SIGTERM, 130 SIGINT): rerun the same command to resume.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags
from ml_collections import config_flags

from laser_jax import distributed, workdir_lock
from laser_jax.cli import define_help, run_cli
from laser_jax.data import synthetic
from laser_jax.data.errors import ConfigError, DataError
from laser_jax.model.hf_io import CheckpointMismatchError
from laser_jax.storage import DamagedFileError
from laser_jax.train import faults, run_files, stages
from laser_jax.train.checkpoint import CheckpointRestoreError, NonFiniteStateError
from laser_jax.train.config import validate
from laser_jax.train.final_eval import evaluate_trained
from laser_jax.train.loop import train
from laser_jax.train.trainer import check_inputs, set_up

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:variant]).", flag_values=FLAGS,
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the final model.", flag_values=FLAGS)
flags.DEFINE_boolean("check", False, "Only check the config, the data and model paths it names, and (with "
                     "--workdir) the workdir; exit 0 when all is well, 2 naming every problem. Writes nothing and "
                     "needs no accelerator (launchers run it before submitting a job).", flag_values=FLAGS)
flags.DEFINE_boolean("force_unlock", False, "Take WORKDIR's lock even when a run on another host holds it or left "
                     "it (only when that run no longer runs: docs/faults.md).", flag_values=FLAGS)
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Join a multi-process JAX cluster (auto: when launched by one).", flag_values=FLAGS)
flags.mark_flag_as_required("config", flag_values=FLAGS)
flags.register_multi_flags_validator(["workdir", "check"], lambda v: bool(v["workdir"] or v["check"]),
                                     "--workdir is required", flag_values=FLAGS)
define_help(FLAGS)

log = logging.getLogger("laser_jax")


def quiet_libraries() -> None:
    """INFO lines from laser_jax only; the libraries' (JAX probing for backends, Orbax and grain
    through absl's logger, ...) from WARNING up, so the output is the run's progress and what
    needs attention."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("laser_jax").setLevel(logging.INFO)


def _command(f: flags.FlagValues) -> int:
    quiet_libraries()
    workdir = f.workdir and (os.path.abspath(f.workdir) if "://" not in f.workdir else f.workdir)
    config_file = f["config"].config_filename
    if f.check:
        return check_main(f.config, workdir, config_file)
    distributed.maybe_initialize(f.distributed)
    try:  # issue 24: one writer per workdir, from before anything is written until the end
        with workdir_lock.held(workdir, "--workdir", force_unlock=f.force_unlock):
            # issue 15: with a pretrain section that asks for it, LM pretraining runs first (train/stages.py)
            return stages.run(f.config, workdir, lambda config, directory: train_main(config, directory, config_file))
    except workdir_lock.LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return faults.EXIT_BAD_INPUT
    except OSError as e:  # the lock file or a stage's files (the task, the LM) on a full disk
        if not faults.is_disk_full(e):
            raise
        print(f"error: {faults.disk_full_error(workdir, 'run files')}", file=sys.stderr)
        return faults.EXIT_DISK_FULL


def _what_to_do(e: BaseException, config, config_file: Optional[str]) -> str:
    """A hint after a config's problems: a real-model config run without its weights and
    data is told what it needs, and which variant runs without them."""
    text = str(e)
    if not config_file or config.model.init_from or ":" in config_file or not any(
            f"{field}:" in text for field in ("data.train_files", "model.tokenizer", "model.init_from")):
        return ""
    return (f"\n{config_file} needs the Hugging Face model (--config.model.init_from=/path/to/model: its weights "
            "and tokenizer) and training data (--config.data.train_files=PATH); "
            f"--config={config_file}:smoke runs a tiny random model on generated data without them")


def check_main(config, workdir: Optional[str], config_file: Optional[str] = None) -> int:
    """`--check`: validate the config and the inputs it names (`trainer.check_inputs`)
    without writing anything or touching an accelerator; print one line, return 0 or 2."""
    try:
        validate(config)
        note = workdir and workdir_lock.check(workdir)  # issue 24: a held lock is reported, not taken
        with tempfile.TemporaryDirectory() as scratch:  # the synthetic task when it is not in WORKDIR/data yet
            data_dir = None
            if config.data.synthetic and not (workdir and synthetic.is_current(
                    os.path.join(workdir, "data"), **synthetic.config_args(config.data))):
                data_dir = scratch
            _, _, model_cfg, source = check_inputs(config, workdir, write=False, data_dir=data_dir)
    except (ConfigError, DataError, FileNotFoundError, NotADirectoryError, CheckpointMismatchError,
            workdir_lock.LockError, DamagedFileError) as e:
        print(f"error: {e}{_what_to_do(e, config, config_file)}", file=sys.stderr)
        return faults.EXIT_BAD_INPUT
    for line in ([note] if note else []) + (run_files.damage_notes(workdir, stages.lm_dir(config, workdir))
                                           if workdir else []):
        print(f"note: {line}", file=sys.stderr)
    print(f"config OK: {config_file or 'the config'}: {model_cfg.family} {model_cfg.num_params() / 1e6:.1f}M "
          f"params, {len(source)} training records" + (f", workdir {workdir}" if workdir else ""))
    return faults.EXIT_OK


def train_main(config, workdir: str, config_file: Optional[str] = None) -> int:
    """Validate, set up and run; print one "error: ..." and return the exit code on the
    faults docs/faults.md lists (2 bad input, 3 non-finite, 4 disk full, 128+N signal N).
    Anything else propagates with its traceback (exit 1)."""

    def fail(code: int, e: BaseException) -> int:
        print(f"error: {e}", file=sys.stderr)
        return code

    with faults.StopSignals() as stop:  # installed first: a signal during set-up is not lost
        log.info("setting up the run in %s", workdir)
        try:
            validate(config)
            if run_files.finished(workdir, config):  # issue 27: a finished run is not redone
                return faults.EXIT_OK
            run = set_up(config, workdir)
        except (ConfigError, DataError, FileNotFoundError, NotADirectoryError, CheckpointMismatchError,
                DamagedFileError) as e:
            print(f"error: {e}{_what_to_do(e, config, config_file)}", file=sys.stderr)
            return faults.EXIT_BAD_INPUT
        except OSError as e:
            return fail(faults.EXIT_DISK_FULL if faults.is_disk_full(e) else faults.EXIT_BAD_INPUT, e)
        run_files.check_and_repair(workdir)  # issue 27: damaged files of a finished run, before rewriting
        try:
            trained = train(run, stop)
        except (faults.NonFiniteLossError, NonFiniteStateError) as e:
            return fail(faults.EXIT_NONFINITE, e)
        except (CheckpointRestoreError, CheckpointMismatchError, DataError, DamagedFileError) as e:
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
    if run.paths.eval_dir and config.train.objective == "laser":  # issue 15: no retrieval eval of an LM run
        evaluate_trained(trained)
    run_files.finish(workdir, config)  # issue 27: the run's manifest, last
    return faults.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, _command, argv, as_absl_app=True, allow_arguments=False, expected_errors=())


if __name__ == "__main__":
    sys.exit(main())
