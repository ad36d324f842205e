"""One writer per workdir (issue 24, laser_jax/workdir_lock.py): a second run on a held
directory is refused by name before anything is compiled or written; a lock left by a run
that died is taken over (this host) or needs --force_unlock (another host).

Two real training processes started together on one workdir, and a SIGKILLed run's lock
taken over by its rerun, are in tests/test_reliability_process.py (they share its runs); a
second multi-process job in tests/test_multiprocess.py."""
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from laser_jax import workdir_lock
from laser_jax.train import main as train_main_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()
# Holds the locks of the (target, inside) pairs given as JSON until killed.
HOLDER = '''
import contextlib, json, sys, time
from laser_jax import workdir_lock
with contextlib.ExitStack() as stack:
    for target, inside in json.loads(sys.argv[1]):
        stack.enter_context(workdir_lock.held(target, inside=inside))
    print("held", flush=True)
    time.sleep(600)
'''


@contextlib.contextmanager
def held_elsewhere(*targets):
    """The locks of `targets` ((path, inside) pairs) held by another process; yields its pid."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(targets)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_record(target, **record):
    os.makedirs(target, exist_ok=True)
    record = {"host": HOST, "pid": dead_pid(), "command": "python -m laser_jax.train --workdir=W",
              "started": time.time() - 60, **record}
    with open(workdir_lock.lock_path(str(target)), "w") as f:
        json.dump(record, f)
    return record


def test_a_held_lock_names_its_holder_and_is_released(tmp_path):
    w = str(tmp_path / "w")
    assert workdir_lock.check(w) is None and not os.path.exists(w)  # --check creates nothing
    with workdir_lock.held(w):
        record = json.load(open(workdir_lock.lock_path(w)))
        assert record["pid"] == os.getpid() and record["host"] == HOST and record["command"] == workdir_lock.own_record()["command"]
        with workdir_lock.held(w):  # nested in this process: not a second writer
            pass
        with pytest.raises(workdir_lock.LockError) as e:
            workdir_lock.check(w)
        since = time.strftime("%H:%M", time.localtime(record["started"]))
        assert str(e.value).startswith(f"--workdir: {w} is in use by pid {os.getpid()} on host {HOST} since {since} (")
        assert str(e.value).endswith("); wait for it or stop it")
    assert not os.path.exists(w)  # the lock made the directory, the block wrote nothing: both gone
    os.makedirs(w)
    with workdir_lock.held(w):
        (tmp_path / "w" / "out.txt").write_text("x")
    assert os.listdir(w) == ["out.txt"]  # the lock file is removed on release


def test_a_stale_lock_of_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    w = str(tmp_path / "w")
    old = write_record(w)
    assert "stale lock" in workdir_lock.check(w) and f"pid {old['pid']}" in workdir_lock.check(w)
    with caplog.at_level(logging.WARNING, logger="laser_jax"), workdir_lock.held(w):
        assert json.load(open(workdir_lock.lock_path(w)))["pid"] == os.getpid()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith(f"took over the stale lock of {w}: pid {old['pid']} on host "
                                                     f"{HOST} since ")
    assert "ended without releasing it" in warned[0]
    assert not os.path.exists(workdir_lock.lock_path(w))


def test_a_lock_left_on_another_host_needs_force_unlock(tmp_path, caplog):
    w = str(tmp_path / "w")
    write_record(w, host="node-17", pid=4242)
    for attempt in (lambda: workdir_lock.check(w), lambda: workdir_lock.held(w).__enter__()):
        with pytest.raises(workdir_lock.LockError, match=r"locked by pid 4242 on host node-17 since .* rerun with "
                                                          r"--force_unlock"):
            attempt()
    with caplog.at_level(logging.WARNING, logger="laser_jax"), workdir_lock.held(w, force_unlock=True):
        pass
    assert "--force_unlock: took over the lock" in caplog.text and "node-17" in caplog.text


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_every_command_refuses_a_held_target_naming_the_holder(tmp_path, monkeypatch, capsys, caplog):
    from laser_jax.data import synthetic
    from laser_jax.experiments import ablate
    from laser_jax.inference import export, export_hf

    monkeypatch.chdir(ROOT)
    w, out, hf, runs, task = (str(tmp_path / n) for n in ("w", "out.npy", "hf", "runs", "task"))
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n')
    commands = {
        "train": (lambda: train_main_module.main(["train", "--config=configs/tiny.py:smoke", f"--workdir={w}"]),
                  f"--workdir: {w}"),
        "train --check": (lambda: train_main_module.main(["train", "--config=configs/tiny.py:smoke",
                                                          f"--workdir={w}", "--check"]), f"--workdir: {w}"),
        "export": (lambda: export.main(["export", f"--model={tmp_path}/model", f"--input={tmp_path}/in.jsonl",
                                        f"--output={out}"]), f"--output: {out}"),
        "export_hf": (lambda: export_hf.main(["export_hf", f"--model={tmp_path}/model", f"--out={hf}"]),
                      f"--out: {hf}"),
        "ablate": (lambda: ablate.main(["ablate", f"--runs_dir={runs}", "--seeds=0", "--variants=basic"]),
                   f"--runs_dir: {runs}"),
        "synthetic": (lambda: synthetic.main(["synthetic", f"--out={task}"]), f"--out: {task}"),
    }
    with held_elsewhere([w, True], [out, False], [hf, False], [runs, True], [task, False]) as pid:
        for name, (command, named) in commands.items():
            monkeypatch.setattr(sys, "argv", ["x"])
            capsys.readouterr()
            with caplog.at_level(logging.INFO):
                code = command()
            line = one_error(capsys.readouterr().err)
            assert code == 2, name
            assert line.startswith(f"error: {named} is in use by pid {pid} on host {HOST} since "), (name, line)
            assert line.endswith("; wait for it or stop it") and "-c" in line, line
            assert not any("compiling" in r.getMessage() for r in caplog.records), name
            caplog.clear()
        assert os.listdir(w) == [workdir_lock.LOCK_NAME] and os.listdir(runs) == [workdir_lock.LOCK_NAME]
        assert sorted(os.listdir(tmp_path)) == sorted([".hf.lock", ".out.npy.lock", ".task.lock", "in.jsonl", "runs",
                                                       "w"])


def tensorboard_purge_steps(directory):
    """The purge step of each TensorBoard event file (None: a first file), read from the
    records themselves (TFRecord framing; the Event proto from tensorboardX)."""
    from tensorboardX.proto.event_pb2 import Event

    steps = {}
    for name in sorted(os.listdir(directory)):
        data, pos, purge = open(os.path.join(directory, name), "rb").read(), 0, None
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 16 + length
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                purge = event.step
        steps[name] = purge
    return list(steps.values())
