"""Reliability (docs/faults.md), part 2, in-process: non-finite steps (stop / skip, the
last good checkpoint kept, no NaN ever saved), a corrupted latest checkpoint, a full disk."""
import errno
import logging
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import mounted_tmpfs, nan_at_steps
from laser_jax.train import checkpoint as ckpt_lib
from laser_jax.train import faults
from laser_jax.train import main as train_cli
from laser_jax.train.loop import train
from laser_jax.train.metrics import MetricsWriter, read_metrics
from laser_jax.train.trainer import set_up
from test_reliability import rtask, run_main, tiny_config  # noqa: F401 (fixture)

LOSS_KEYS = ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid")


def steps_on_disk(workdir):
    d = os.path.join(str(workdir), "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def restore_latest(config, workdir):
    run = set_up(config, str(workdir))
    return run.checkpointer().restore(run.abstract_state)


def inject_nan_steps(monkeypatch, steps):
    """The CLI's set-up (`train_main`) yields runs whose given steps produce NaN."""
    monkeypatch.setattr(train_cli, "set_up", lambda config, workdir: nan_at_steps(set_up(config, workdir), steps))


def adam_count(state) -> int:
    counts = [int(x) for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
              if "count" in jax.tree_util.keystr(path)]
    return max(counts)


# ----------------------------------------------------------------------------- non-finite steps
def test_nonfinite_step_stops_with_step_losses_and_records_and_keeps_the_last_checkpoint(
        rtask, tmp_path, capsys, monkeypatch):
    inject_nan_steps(monkeypatch, {3})
    config = tiny_config(rtask)
    code, err = run_main(config, tmp_path, capsys)
    assert code == faults.EXIT_NONFINITE
    msg = err.splitlines()[0]
    assert msg.startswith("error: non-finite loss or gradient at step 3: loss=nan, loss_cl_explicit=nan, loss_cl_latent=nan")
    assert "batch records [16, 17, 18, 19, 20, 21, 22, 23]" in msg
    assert f"{rtask['train']}: line 17; {rtask['train']}: line 18" in msg
    assert f"the last good checkpoint (step 2, {tmp_path}/checkpoints) is intact" in msg
    assert steps_on_disk(tmp_path) == [2]
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    state, step = restore_latest(config, tmp_path)
    assert step == 2 and ckpt_lib.all_finite(state.trainable) and adam_count(state) == 2


def test_nonfinite_skip_drops_only_that_update_and_goes_on(rtask, tmp_path, caplog):
    run = nan_at_steps(set_up(tiny_config(rtask, **{"train.nonfinite": "skip"}), str(tmp_path)), {2})
    with caplog.at_level(logging.WARNING, logger="laser_jax"):
        trainer = train(run)
    assert trainer.skipped_steps == [2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("non-finite loss or gradient at step 2") and w.endswith(
        "the update was skipped (train.nonfinite=skip)") for w in warnings)
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert np.isnan(rows[1]["loss"]) and all(np.isfinite(r["loss"]) for r in rows[2:])
    assert adam_count(trainer.state) == 3  # 4 steps, one update skipped
    assert steps_on_disk(tmp_path) == [2, 4] and ckpt_lib.all_finite(trainer.state.trainable)


def test_parameters_with_nan_are_never_checkpointed(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
    state = types.SimpleNamespace(trainable={"params": {"w": jnp.array([1.0, jnp.nan])}})
    with pytest.raises(ckpt_lib.NonFiniteStateError, match="step 5: parameters contain NaN/Inf"):
        checkpointer.save(5, state)
    assert steps_on_disk(tmp_path) == [] and checkpointer.latest_step() is None


# ----------------------------------------------------------------------------- corrupted checkpoints
def corrupt(step_dir):
    """Truncate every file of the checkpoint's state item (as a crash of the disk might)."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            open(os.path.join(root, name), "w").close()


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(rtask, tmp_path, capsys, caplog):
    config = tiny_config(rtask)
    train(set_up(config, str(tmp_path)))
    expected = read_metrics(str(tmp_path))
    corrupt(tmp_path / "checkpoints" / "4")
    resumed = set_up(config, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="laser_jax"):
        train(resumed)
    report = "\n".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint step 4 in {tmp_path}/checkpoints could not be restored" in report
    assert "moved the unreadable checkpoint step 4 to" in report and "resumed" not in report.split("\n")[0]
    moved = os.listdir(tmp_path / "corrupt_checkpoints")
    assert len(moved) == 1 and moved[0].startswith("4-")
    assert steps_on_disk(tmp_path) == [2, 4]  # step 4 redone from step 2
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([[r[k] for k in LOSS_KEYS] for r in rows],
                               [[r[k] for k in LOSS_KEYS] for r in expected], rtol=1e-6)
    # When no checkpoint restores (all damaged, or another model), the run stops instead
    # of silently starting over, and moves nothing.
    for step in (2, 4):
        corrupt(tmp_path / "checkpoints" / str(step))
    code, err = run_main(config, tmp_path, capsys)
    assert code == faults.EXIT_BAD_INPUT
    assert err.startswith(f"error: no checkpoint in {tmp_path}/checkpoints could be restored (step 4: ")
    assert steps_on_disk(tmp_path) == [2, 4] and len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1


# ----------------------------------------------------------------------------- full disk
def test_full_disk_while_checkpointing_names_the_directory_and_keeps_the_previous_step(
        rtask, tmp_path, capsys, monkeypatch):
    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{tmp_path}/checkpoints/4.orbax-checkpoint-tmp")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    code, err = run_main(tiny_config(rtask), tmp_path, capsys)
    assert code == faults.EXIT_DISK_FULL
    assert err.startswith(f"error: disk full: could not write checkpoint step 4 to {tmp_path}/checkpoints "
                          "(no space left on device). The newest complete checkpoint (step 2) is intact.")
    assert steps_on_disk(tmp_path) == [2]
    # Metrics too: resumed from step 2, the next row cannot be written.
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)

    def write(self, row):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)

    monkeypatch.setattr(MetricsWriter, "write", write)
    code, err = run_main(tiny_config(rtask), tmp_path, capsys)
    assert code == faults.EXIT_DISK_FULL
    assert err.startswith(f"error: disk full: could not write run outputs to {tmp_path} (no space left on "
                          "device). Checkpoints already written are intact.")
    assert steps_on_disk(tmp_path) == [2]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 192 KiB tmpfs (needs mount rights; skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "small_disk", "size=192k") as mount_point:
        yield mount_point


def test_a_really_full_disk_is_reported_as_such(rtask, tmp_path, tiny_tmpfs, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(tiny_tmpfs, workdir / "checkpoints")  # the checkpoints land on the tiny disk
    code, err = run_main(tiny_config(rtask, **{"train.num_steps": 2, "checkpoint.every_steps": 1}), workdir, capsys)
    assert code == faults.EXIT_DISK_FULL, err[-3000:]
    assert err.startswith("error: disk full: could not write ") and f"to {workdir}/checkpoints" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- helpers
def test_nonfinite_message_lists_terms_records_and_locations():
    metrics = {"loss": float("nan"), "loss_cl_latent": 1.5, "acc_latent": 0.5, "l2_grads": float("inf")}
    msg = faults.nonfinite_message(7, metrics, np.arange(20), lambda i: f"f.jsonl: line {i + 1}", limit=3)
    assert msg == ("non-finite loss or gradient at step 7: loss=nan, loss_cl_latent=1.5, l2_grads=inf; "
                   "batch records [0, 1, 2] and 17 more (f.jsonl: line 1; f.jsonl: line 2; f.jsonl: line 3)")


def test_disk_full_detection_and_signal_exit_codes():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert faults.is_disk_full(outer)
    assert faults.is_disk_full(ValueError("tensorstore: Error writing ...: No space left on device"))
    assert not faults.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert faults.exit_code_for_signal(15) == 143 and faults.exit_code_for_signal(2) == 130


def test_stop_signals_records_the_first_signal_and_restores_handlers():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with faults.StopSignals() as stop:
        assert stop.installed and signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_processes_of_a_multi_process_run_agree_to_stop_at_the_same_step():
    def gather(*values):
        return lambda own: np.array(values)

    assert faults.agreed_stop(15, 3, 5, 1, gather()) == 15  # one process: its own signal, any step
    assert faults.agreed_stop(None, 3, 5, 1, gather()) is None
    assert faults.agreed_stop(15, 3, 5, 2, gather(15, 0)) is None  # not a comparison step: go on
    assert faults.agreed_stop(None, 10, 5, 2, gather(0, 15)) == 15  # another host's signal counts
    assert faults.agreed_stop(None, 10, 5, 2, gather(0, 0)) is None
