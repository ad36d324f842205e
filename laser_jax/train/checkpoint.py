"""Orbax checkpoints of a training run: state + data iterator + configuration together.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `state` is the TrainState (restored
onto whatever mesh the restoring run uses: Orbax reshards), `data` the grain iterator
position (one file per host), `meta` the resolved run config, the model config and the
text format (`laser_jax.inference.load.make_meta`), so a checkpoint alone is enough for
inference (with WORKDIR/tokenizer), where `laser_jax.inference.load` reads it.

Saves are asynchronous; Orbax writes into a temporary directory and renames it when
complete, so a kill during a save leaves the previous checkpoint intact and the partial
one ignored (Orbax deletes such temporary directories when the next run starts). A
checkpoint that fails to restore is moved aside to WORKDIR/corrupt_checkpoints/ with a
warning in favour of the one before it; when none restores, the run stops rather than
silently starting over. Parameters that are not finite are never written, and a full disk
raises `DiskFullError` naming the directory.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Tuple

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

# The checkpoint layout and meta format are defined with their reader (inference/load.py).
from laser_jax.inference import lora_layout
from laser_jax.inference.load import CHECKPOINTS, TOKENIZER, make_meta, step_dirs  # noqa: F401
from laser_jax.train import faults

try:
    from orbax.checkpoint import checkpoint_managers
except ImportError:  # older Orbax: max_to_keep instead of preservation policies
    checkpoint_managers = None

CORRUPT = "corrupt_checkpoints"  # WORKDIR/corrupt_checkpoints/<step>-<time>: checkpoints that failed to restore
log = logging.getLogger("laser_jax")


class NonFiniteStateError(RuntimeError):
    """Refused to checkpoint parameters containing NaN or Inf."""


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none of them could be restored (corrupt, or another config)."""


def _manager_options(keep: int, async_save: bool) -> ocp.CheckpointManagerOptions:
    kwargs = dict(enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    try:
        return ocp.CheckpointManagerOptions(preservation_policy=checkpoint_managers.LatestN(keep), **kwargs)
    except (AttributeError, TypeError):  # older Orbax
        return ocp.CheckpointManagerOptions(max_to_keep=keep, **kwargs)


def all_finite(tree) -> bool:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return True
    return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))))


def _from_orbax(code_path: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in code_path or f"{os.sep}tensorstore{os.sep}" in code_path


class _OrbaxErrorFilter(logging.Filter):
    """Drops Orbax's own ERROR records of a failed save or restore (each with a traceback, from
    every worker thread): Orbax raises the same error to its caller, where laser_jax reports
    it once (a full disk as one line, docs/faults.md; anything else with its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.name == "asyncio":  # "... exception was never retrieved" of an Orbax write
            exc = record.exc_info[1] if record.exc_info else None
            return not (_from_orbax(record.getMessage()) or _raised_in_orbax(exc)
                        or (exc is not None and faults.is_disk_full(exc)))
        return not _from_orbax(record.pathname)


def _raised_in_orbax(exc: Optional[BaseException]) -> bool:
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if _from_orbax(tb.tb_frame.f_code.co_filename):
            return True
        tb = tb.tb_next
    return False


def _quiet_unraisable(previous):
    """A sys.unraisablehook that drops the leftovers of a failed asynchronous save (Orbax's
    coroutines, closed event loops, the full disk itself) and passes on everything else."""

    def hook(unraisable):
        exc, obj = unraisable.exc_value, unraisable.object
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
        if ((code is not None and _from_orbax(code.co_filename))
                or (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc))
                or (exc is not None and faults.is_disk_full(exc))):
            return
        previous(unraisable)

    hook.laser_jax_quiet = True
    return hook


def quiet_orbax_errors() -> None:
    """Install `_OrbaxErrorFilter` (on absl's logger, which Orbax logs through, and asyncio's) and the
    unraisable-exception filter, once per process."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxErrorFilter) for f in logger.filters):
            logger.addFilter(_OrbaxErrorFilter())
    if not getattr(sys.unraisablehook, "laser_jax_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def newest_meta(workdir: str) -> Optional[Tuple[int, str, dict]]:
    """(step, checkpoints directory, meta) of the newest complete checkpoint of WORKDIR that
    has a meta item, read without writing anything; None when there is none."""
    directory = epath.Path(workdir) / CHECKPOINTS
    if not directory.is_dir():
        return None
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()),
                   reverse=True)
    for step in steps:
        meta = directory / str(step) / "meta" / "metadata"
        if meta.exists():
            try:
                return step, str(directory), json.loads(meta.read_text())
            except ValueError:  # a damaged meta item: the restore reports it
                continue
    return None


class Checkpointer:
    """Save and restore (state, data iterator, meta) under WORKDIR/checkpoints."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(workdir, CHECKPOINTS) if "://" not in workdir else f"{workdir}/{CHECKPOINTS}"
        quiet_orbax_errors()
        self.manager = ocp.CheckpointManager(self.directory, options=_manager_options(keep, async_save))
        self.pending: Optional[int] = None  # the step of a save that may still be running

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, meta: Optional[dict] = None, force: bool = False) -> bool:
        """Start saving `state` (and the iterator position) at `step`; True if a save began."""
        if not all_finite(state.trainable):
            raise NonFiniteStateError(f"step {step}: parameters contain NaN/Inf; not checkpointing them "
                                      f"(the last checkpoint in {self.directory} is kept)")
        items = {"state": ocp.args.PyTreeSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        self.wait()  # the previous save's own failure names its step (Orbax would wait here anyway)
        log.info("saving checkpoint step %d to %s", step, self.directory)
        with self._disk_full_check(f"checkpoint step {step}"):
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if started:
            self.pending = step
        return started

    @contextlib.contextmanager
    def _disk_full_check(self, what: str):
        """Turn a full-disk failure (raised now, or by an earlier asynchronous save) into
        `DiskFullError` naming the directory and the newest checkpoint still intact."""
        try:
            yield
        except Exception as e:
            if not faults.is_disk_full(e):
                raise
            kept = self._complete_steps()
            note = (f"The newest complete checkpoint (step {kept[-1]}) is intact. " if kept
                    else "No complete checkpoint exists yet. ")
            raise faults.disk_full_error(self.directory, what, note) from e

    def _complete_steps(self) -> list:
        return [int(s) for s in step_dirs(self.directory)] if "://" not in self.directory else []

    def restore(self, abstract_state, data_iterator=None, model_cfg=None) -> Optional[Tuple[Any, int]]:
        """Restore the newest readable checkpoint onto `abstract_state`'s shardings.

        Args:
          abstract_state: the state's pytree of jax.ShapeDtypeStruct with `sharding` set.
          data_iterator: a grain iterator to reposition (restored in place).
          model_cfg: the model's config; with it, a checkpoint holding LoRA adapters in the
            per-projection layout of before issue 22 restores into the fused layout
            (`laser_jax.inference.lora_layout`); without it such a checkpoint fails to restore.

        Returns:
          (state, step), or None if there is no checkpoint.

        Raises:
          CheckpointRestoreError: when checkpoints exist but none restores (all corrupt, or
            written for another model/config); nothing is moved then.
        """
        failed = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                old_layout = model_cfg is not None and lora_layout.stored_per_projection(
                    os.path.join(self.directory, str(step), "state"))
                item = lora_layout.per_projection_item(abstract_state, model_cfg) if old_layout else abstract_state
                items = {"state": ocp.args.PyTreeRestore(
                    item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item))}
                data_state = None
                if data_iterator is not None:
                    data_state = self._other_process_count_data(step)
                    if data_state is None:
                        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                if data_state is not None:
                    data_iterator.set_state(data_state)
            except Exception as e:  # a corrupted or partial checkpoint: fall back
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.warning("checkpoint step %d in %s could not be restored (%s); trying the previous one",
                            step, self.directory, reason)
                failed.append((step, reason))
                continue
            self._move_aside([s for s, _ in failed])
            if old_layout:
                log.info("checkpoint step %d holds LoRA adapters in the per-projection layout; restored "
                         "into the fused layout", step)
                return lora_layout.fuse_restored(restored["state"], abstract_state), step
            return restored["state"], step
        if failed:
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} could be restored ("
                + "; ".join(f"step {s}: {r}" for s, r in failed)
                + "). If the model or config changed, use a new --workdir; otherwise move the damaged "
                  "step directories away to start over")
        return None

    def _move_aside(self, steps) -> None:
        """Move checkpoints that failed to restore to WORKDIR/corrupt_checkpoints/ (kept for
        inspection, and out of the way of this run's own saves of those steps)."""
        if not steps or "://" in self.directory:
            return
        target_root = os.path.join(os.path.dirname(self.directory), CORRUPT)
        if jax.process_index() == 0:
            os.makedirs(target_root, exist_ok=True)
            for step in steps:
                target = os.path.join(target_root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(os.path.join(self.directory, str(step)), target)
                log.warning("moved the unreadable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("laser_jax_checkpoint_move_aside")
        self.manager.reload()

    def _other_process_count_data(self, step: int) -> Optional[dict]:
        """The data iterator state of a checkpoint written by a different number of processes
        (None when this process's own file is there). The state names the next global step
        only (laser_jax.data.pipeline), so every host's file holds the same one."""
        data_dir = epath.Path(self.directory) / str(step) / "data"
        own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if own.exists() or not data_dir.exists():
            return None
        written = sorted(data_dir.glob("process_*-of-*.json"))
        return json.loads(written[0].read_text()) if written else None

    def wait(self):
        """Block until a pending asynchronous save is complete (raises its error, if any,
        naming its step)."""
        pending, self.pending = self.pending, None
        with self._disk_full_check(f"checkpoint step {pending}" if pending is not None else "a checkpoint"):
            self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


