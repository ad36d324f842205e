"""Reliability (docs/faults.md), part 3: real `python -m laser_jax.train` processes.

Five runs of one config start together (they mostly wait on each other's compiles anyway):
  A  uninterrupted                                           -> the reference metrics
  B  on A's workdir (issue 24)                               -> exit 2 naming A, before compiling
     (whichever of the two takes the workdir's lock first is A)
  C  SIGTERM while the first step compiles                   -> exit 143 with a checkpoint;
     rerun (C2), it ends with A's metrics
  D  SIGINT during set-up (while records are validated)      -> exit 130, nothing trained
  E  SIGKILL while its last asynchronous save commits        -> step 2 restorable, the partial
     step 4 ignored and cleaned up; resumed by the same command, it takes over the killed
     run's lock with a warning and ends like A. All of E's steps ran before the
     kill, so its metrics are a second full run of the same config and seed: they must equal
     A's exactly (determinism).
"""
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from laser_jax.train.main import main
from laser_jax.train.metrics import read_metrics
from test_reliability import rtask, tiny_config  # noqa: F401 (fixture)
from test_reliability_faults import LOSS_KEYS, steps_on_disk
from test_workdir_lock import tensorboard_purge_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 400

CONFIG_FILE = '''"""Test run config: the JSON beside this file."""
import json
import os

import ml_collections


def get_config():
    with open(os.path.join(os.path.dirname(__file__), "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))
'''

# Holds the commit (the rename of the temporary directory) of one step's save forever, so a
# SIGKILL is certain to land while that save is incomplete. Orbax internals: if this
# attribute moves, update the hook (the test fails loudly rather than testing nothing).
BLOCK_SAVE = '''
import asyncio, os, sys
from orbax.checkpoint._src.path import atomicity
_finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def _blocked(self):
    if self.get_final().name == os.environ["BLOCK_SAVE_STEP"]:
        print("FAULT-INJECTION: commit of step", self.get_final().name, "blocked", flush=True)
        await asyncio.sleep(3600)
    return await _finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = _blocked
from laser_jax.train.main import main
sys.exit(main())
'''


class Run:
    """A training subprocess whose output is collected line by line; `trigger` (text,
    signal) sends the signal once, right after the first line containing the text."""

    def __init__(self, config_file, workdir, trigger=None, block_save_step=None):
        self.workdir, self.trigger, self.lines, self.signalled_after = str(workdir), trigger, [], None
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        flags = [f"--config={config_file}", f"--workdir={workdir}"]
        if block_save_step is None:
            cmd = [sys.executable, "-m", "laser_jax.train", *flags]
        else:
            cmd = [sys.executable, "-c", BLOCK_SAVE, *flags]
            env["BLOCK_SAVE_STEP"] = str(block_save_step)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.trigger and self.signalled_after is None and self.trigger[0] in line:
                self.signalled_after = line
                self.proc.send_signal(self.trigger[1])

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(timeout=30)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def losses(rows):
    return np.array([[r[k] for k in LOSS_KEYS] for r in rows])


@pytest.fixture(scope="module")
def runs(rtask, tmp_path_factory):
    root = tmp_path_factory.mktemp("process_runs")
    config = tiny_config(rtask, **{"checkpoint.async_save": True})
    (root / "config.json").write_text(config.to_json())
    (root / "config.py").write_text(CONFIG_FILE)
    cfg = str(root / "config.py")
    started = {
        "A": Run(cfg, root / "A"),
        "B": Run(cfg, root / "A"),  # issue 24: a second run on A's workdir, started with it
        "C": Run(cfg, root / "C", trigger=("compiling the train step", signal.SIGTERM)),
        "D": Run(cfg, root / "D", trigger=("setting up the run", signal.SIGINT)),
        "E": Run(cfg, root / "E", trigger=("FAULT-INJECTION: commit of step 4 blocked", signal.SIGKILL),
                 block_save_step=4),
    }
    codes = {"C": started["C"].wait()}
    first_c_output, c_steps = started["C"].output, steps_on_disk(root / "C")
    resumed_c = Run(cfg, root / "C")  # overlaps the others
    codes.update({name: run.wait() for name, run in started.items()})
    if codes["B"] == 0:  # B won the workdir's lock: it is the uninterrupted run
        started["A"], started["B"] = started["B"], started["A"]
        codes["A"], codes["B"] = codes["B"], codes["A"]
    e_metrics = read_metrics(started["E"].workdir)  # before its resumption
    codes["C2"] = resumed_c.wait()
    return dict(root=root, config=config, runs=started, codes=codes, first_c_output=first_c_output,
                c_steps=c_steps, resumed_c=resumed_c, e_metrics=e_metrics)


def test_same_config_and_seed_give_identical_metrics(runs):
    a = runs["runs"]["A"]
    assert runs["codes"]["A"] == 0, a.output[-3000:]
    rows_a, rows_e = read_metrics(a.workdir), runs["e_metrics"]
    assert [r["step"] for r in rows_a] == [1, 2, 3, 4] and [r["step"] for r in rows_e] == [1, 2, 3, 4]
    np.testing.assert_array_equal(losses(rows_a), losses(rows_e))
    assert steps_on_disk(a.workdir) == [2, 4]


def test_sigterm_during_compilation_saves_a_checkpoint_and_the_resumed_run_ends_like_an_uninterrupted_one(runs):
    c = runs["runs"]["C"]
    assert runs["codes"]["C"] == 128 + signal.SIGTERM, c.output[-3000:]
    out = runs["first_c_output"]
    stopped = re.findall(r"stopped by signal 15 at step (\d+) \(checkpoint step (\d+) in (\S+)\); "
                         "rerun the same command to resume", out)
    assert len(stopped) == 1 and stopped[0][0] == stopped[0][1], out[-3000:]
    step = int(stopped[0][0])
    assert 1 <= step < 4 and runs["c_steps"][-1] == step
    assert "Traceback" not in out
    resumed = runs["resumed_c"].output
    assert runs["codes"]["C2"] == 0 and f"resumed from step {step}" in resumed, resumed[-3000:]
    rows, expected = read_metrics(c.workdir), read_metrics(runs["runs"]["A"].workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(rows), losses(expected), rtol=1e-6)


def test_sigint_during_set_up_exits_130_without_training(runs):
    d = runs["runs"]["D"]
    assert runs["codes"]["D"] == 128 + signal.SIGINT, d.output[-3000:]
    assert "stopped by signal 2 during set-up, before the first step; nothing to checkpoint" in d.output
    assert "step 1/" not in d.output and "Traceback" not in d.output and steps_on_disk(d.workdir) == []


def test_a_second_run_on_a_workdir_in_use_exits_2_naming_the_holder(runs):
    """Issue 24: two runs started together on one workdir: one trains (A), the other exits 2
    before compiling, naming it; A's metrics hold each step once (the test above)."""
    a, b = runs["runs"]["A"], runs["runs"]["B"]
    assert runs["codes"]["B"] == 2, b.output[-3000:]
    errors = [line for line in b.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in b.output and "compiling" not in b.output, b.output[-3000:]
    assert errors[0].startswith(f"error: --workdir: {a.workdir} is in use by pid {a.proc.pid} on host "
                                f"{socket.gethostname()} since ")
    assert errors[0].endswith("; wait for it or stop it")


def test_sigkill_during_an_asynchronous_save_leaves_the_previous_checkpoint_restorable(runs, monkeypatch, caplog):
    e = runs["runs"]["E"]
    assert runs["codes"]["E"] == -signal.SIGKILL, e.output[-3000:]
    ckpt_dir = os.path.join(e.workdir, "checkpoints")
    partial = [d for d in os.listdir(ckpt_dir) if d.startswith("4.orbax-checkpoint-tmp")]
    assert steps_on_disk(e.workdir) == [2] and len(partial) == 1
    argv = ["train", f"--config={runs['root']}/config.py", f"--workdir={e.workdir}"]
    monkeypatch.setattr(sys, "argv", argv)
    with caplog.at_level(logging.WARNING, logger="laser_jax"):
        assert main(argv) == 0  # the same command again, in-process
    # Issue 24: the killed run's lock is taken over, naming it; TensorBoard purges the redone steps.
    assert f"took over the stale lock of {e.workdir}: pid {e.proc.pid} on host {socket.gethostname()}" in caplog.text
    assert tensorboard_purge_steps(os.path.join(e.workdir, "tensorboard")) == [None, 3]
    assert not any("orbax-checkpoint-tmp" in d for d in os.listdir(ckpt_dir))
    assert steps_on_disk(e.workdir) == [2, 4]
    rows, expected = read_metrics(e.workdir), read_metrics(runs["runs"]["A"].workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(losses(rows), losses(expected), rtol=1e-6)
