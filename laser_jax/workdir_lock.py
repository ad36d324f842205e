"""One writer per directory: the lock a run holds on its workdir or output for its whole life.

Every command that writes a run's files takes it before writing anything: training on
WORKDIR (which holds the task and LM stages: WORKDIR/data, WORKDIR/lm), the task generator
on --out, `ablate` on its runs directory, `export` on OUT.npy and `export_hf` on HF_DIR.
A second run on a held directory stops before compiling with one line naming the holder:

    error: --workdir: W is in use by pid 1234 on host h1 since 13:40 (python -m laser_jax.train ...);
    wait for it or stop it

The lock is the kernel's `flock` on a lock file (WORKDIR/.laser_jax.lock; beside an output
that is replaced as a whole, `.NAME.lock`), so it ends with its process however that ends.
The file holds the holder's record (host, pid, command, start time; JSON) and is removed on a
clean release, so a record found by the next run is a run that ended without releasing it
(SIGKILL, a crash, a lost machine). On this host (its pid is gone, the kernel lock free) it
is taken over with a warning naming the old holder; a record from another host may belong
to a run that still writes there (not every shared file system carries locks across
machines), so the run stops and says so: `--force_unlock` takes the lock anyway.

Multi-process jobs: process 0 takes the lock for the job and tells the others its verdict
through the coordination service (laser_jax.distributed), so the processes of one job never
contend and a second job is refused on every process.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Iterator, Optional

from laser_jax import distributed
from laser_jax.storage import process_alive

LOCK_NAME = ".laser_jax.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # a file system without flock
_COMMAND_CHARS = 160  # of the holder's command line in messages
_verdicts = 0  # held() calls so far: the key of each verdict shared with the job's other processes
_held_here = set()  # lock files this process holds (a nested held() of one of them is a no-op)

log = logging.getLogger("laser_jax")


class LockError(ValueError):
    """The directory is held by another run, or by a run on another host that may still be
    alive; or the lock file cannot be written. One line naming the directory (exit 2)."""


def lock_path(target: str, inside: bool = True) -> str:
    """The lock file of `target`: inside it (a workdir), or beside it as `.NAME.lock` (an
    output file or a directory replaced as a whole)."""
    target = os.path.abspath(target)
    if inside:
        return os.path.join(target, LOCK_NAME)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


def own_record() -> dict:
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    command = " ".join([os.path.basename(argv[0]), *argv[1:]])
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "started": time.time()}


def describe(record: dict) -> str:
    """"pid 1234 on host h1 since 13:40 (python -m ...)" of a holder's record."""
    started = record.get("started")
    if isinstance(started, (int, float)):
        same_day = time.strftime("%Y%m%d", time.localtime(started)) == time.strftime("%Y%m%d")
        since = f" since {time.strftime('%H:%M' if same_day else '%Y-%m-%d %H:%M', time.localtime(started))}"
    else:
        since = ""
    command = " ".join(str(record.get("command", "?")).split())
    if len(command) > _COMMAND_CHARS:
        command = command[:_COMMAND_CHARS - 4] + " ..."
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')}{since} ({command})"


def _in_use(flag: str, target: str, record: Optional[dict]) -> LockError:
    who = describe(record) if record else "another run (its record is not written yet)"
    return LockError(f"{flag}: {target} is in use by {who}; wait for it or stop it")


def _elsewhere(flag: str, target: str, record: dict) -> LockError:
    return LockError(f"{flag}: {target} is locked by {describe(record)}, which ended without releasing it or still "
                     "runs there (this host cannot tell which). If it no longer runs, rerun with --force_unlock "
                     "(docs/faults.md)")


def _read_record(fd: int) -> Optional[dict]:
    """The record in an open lock file: None when empty, {} when unreadable (cut short)."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class _Lock:
    """A lock file held by this process (flock on an open descriptor)."""

    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd
        self.created_dir = False  # the lock made its directory: removed again on release if left empty

    @classmethod
    def acquire(cls, path: str, flag: str, target: str, force_unlock: bool) -> "_Lock":
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            locked = cls._flock(fd, path, flag, target, force_unlock)
            if locked is None:  # forced: the old file was removed; lock a new one
                continue
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # not a file its holder removed while we waited
                break
            os.close(fd)
        lock = cls(path, fd)
        try:
            lock._take_over(flag, target, force_unlock, locked)
            lock._write(own_record())
        except BaseException:
            lock.release(remove=False)
            raise
        return lock

    @staticmethod
    def _flock(fd: int, path: str, flag: str, target: str, force_unlock: bool) -> Optional[bool]:
        """True when locked; False on a file system without locks; None after --force_unlock
        removed a held lock file."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            record = None
            for _ in range(20):  # the holder writes its record right after locking
                record = _read_record(fd)
                if record is not None:
                    break
                time.sleep(0.05)
            os.close(fd)
            if not force_unlock:
                raise _in_use(flag, target, record) from None
            log.warning("--force_unlock: removing the lock of %s held by %s", target,
                        describe(record) if record else "another run")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("%s: the file system gives no locks (%s); relying on the lock file's record", path,
                        e.strerror)
            return False

    def _take_over(self, flag: str, target: str, force_unlock: bool, locked: bool) -> None:
        """A record left by a run that ended without releasing the lock (module doc)."""
        old = _read_record(self.fd)
        if old is None:
            return
        here = old.get("host") == socket.gethostname()
        if here and not locked and old.get("pid") != os.getpid() and process_alive(old.get("pid")):
            raise _in_use(flag, target, old)
        if here or not old:
            log.warning("took over the stale lock of %s: %s ended without releasing it", target,
                        describe(old) if old else "a run whose record is unreadable")
        elif not force_unlock:
            raise _elsewhere(flag, target, old)
        else:
            log.warning("--force_unlock: took over the lock of %s from %s", target, describe(old))

    def _write(self, record: dict) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, (json.dumps(record) + "\n").encode())
        os.fsync(self.fd)

    def release(self, remove: bool = True) -> None:
        """Remove the lock file (when it is still ours) and unlock."""
        try:
            if remove and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.remove(self.path)
        except OSError:  # gone already, or the directory became read-only: the kernel lock ends anyway
            pass
        finally:
            os.close(self.fd)
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                os.rmdir(os.path.dirname(self.path))


def _acquire_or_explain(path: str, flag: str, target: str, force_unlock: bool) -> _Lock:
    try:
        created = not os.path.isdir(os.path.dirname(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = _Lock.acquire(path, flag, target, force_unlock)
        lock.created_dir = created
        return lock
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk: the commands report it as such (exit 4)
        raise LockError(f"{flag}: {target}: cannot write there ({e.strerror or e}"
                        f"{': ' + e.filename if e.filename and e.filename != target else ''}); choose a writable "
                        f"{flag}") from None


@contextlib.contextmanager
def held(target: str, flag: str = "--workdir", *, inside: bool = True, force_unlock: bool = False) -> Iterator[None]:
    """Hold `target`'s lock for the block (process 0 of a multi-process job holds it for all).

    Args:
      target: the workdir or output path ("gs://..." paths are not locked).
      flag: the command-line flag that named it, for messages.
      inside: the lock file is inside `target` (a workdir), else beside it.
      force_unlock: take a lock left by a run on another host, or held (docs/faults.md).

    Raises:
      LockError: held by another run (on every process of the job), or not writable.
    """
    global _verdicts
    _verdicts += 1
    target = os.path.abspath(target) if "://" not in target else target
    path = lock_path(target, inside)
    if "://" in target or path in _held_here:  # a bucket; or already held by this process (nested)
        yield
        return
    index, count = distributed.process_index_and_count()
    lock, failure = None, None
    if index == 0:
        try:
            lock = _acquire_or_explain(path, flag, target, force_unlock)
        except Exception as e:  # told to the other processes first, then raised
            failure = e
    if count > 1:
        verdict = distributed.share_from_process_0(f"laser_jax/lock/{_verdicts}/{path}",
                                                   "ok" if failure is None else str(failure) or repr(failure))
        if verdict != "ok" and failure is None:
            raise LockError(verdict)
    if failure is not None:
        raise failure
    _held_here.add(path)
    try:
        yield
    finally:
        _held_here.discard(path)
        if lock is not None:
            lock.release()


def check(target: str, flag: str = "--workdir", *, inside: bool = True) -> Optional[str]:
    """`--check`: raise LockError when `target` is held (or left locked by another host),
    without taking the lock or writing; a note when a stale lock of this host would be
    taken over, else None."""
    path = lock_path(target, inside)
    if "://" in target or not os.path.exists(path):
        return None
    target = os.path.abspath(target)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    locks = True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise _in_use(flag, target, _read_record(fd)) from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            locks = False
        old = _read_record(fd)
    finally:
        os.close(fd)
    if old is None:
        return None
    here = old.get("host") == socket.gethostname()
    if here and not locks and process_alive(old.get("pid")):
        raise _in_use(flag, target, old)
    if old and not here:
        raise _elsewhere(flag, target, old)
    return f"{target}: a stale lock ({describe(old) if old else 'unreadable record'}) will be taken over"
