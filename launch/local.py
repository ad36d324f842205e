#!/usr/bin/env python3
r"""Run N processes of a JAX program on this machine, as if they were the hosts of a cluster.

For testing multi-host code paths (jax.distributed, per-process data sharding, checkpointing
from several processes) on one CPU machine:

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \
        --config=configs/tiny.py --workdir=runs/local2

runs `python -m laser_jax.train --config=configs/tiny.py --workdir=runs/local2` twice. If the
arguments after `--` start with -m, -c or a *.py script they replace `-m laser_jax.train`:

    python launch/local.py -n 2 -- -c "import os; print(os.environ['JAX_PROCESS_ID'])"

Process i gets this environment (on top of the launcher's own):
    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT   a free port, or --port; jax.distributed.initialize()
                                             reads this variable by itself
    JAX_NUM_PROCESSES=N                      pass these two to jax.distributed.initialize(
    JAX_PROCESS_ID=i                             num_processes=..., process_id=...)
    JAX_PLATFORMS=cpu                        (--platforms to change)
    XLA_FLAGS=... --xla_force_host_platform_device_count=D   (D = --devices_per_process; other
                                             XLA_FLAGS of the launcher's environment are kept)
    PYTHONUNBUFFERED=1                       so that output lines arrive as they are printed

Every output line of process i (stdout and stderr) is printed prefixed with "[pi] ". The launcher
waits for all processes; when one fails it names it, terminates the others and exits non-zero
(with the failed process's exit code). SIGINT and SIGTERM are forwarded to all processes (the exit
code is then at least 128 + the signal number); a second SIGINT kills them. --timeout=SECONDS stops everything after that long (exit code 124).
--dry_run prints each process's environment and command, one line per process, and runs nothing.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

DEFAULT_COMMAND = ["-m", "laser_jax.train"]
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TERMINATE_GRACE_S = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1:]
    else:
        own, command = argv, []
    parser = argparse.ArgumentParser(
        prog="launch/local.py",
        usage="%(prog)s -n N [options] [-- ARGS ...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-n", "--num_processes", type=int, required=True,
                        help="number of processes to start")
    parser.add_argument("--devices_per_process", type=int, default=1,
                        help="simulated CPU devices per process (default 1)")
    parser.add_argument("--port", type=int, default=0,
                        help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--platforms", default="cpu", help="JAX_PLATFORMS for the processes (default cpu)")
    parser.add_argument("--python", default=sys.executable,
                        help="Python interpreter (default: the one running this launcher)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop all processes after this many seconds and exit 124")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each process's environment and command; run nothing")
    args = parser.parse_args(own)
    if args.num_processes < 1:
        parser.error("--num_processes must be at least 1")
    if args.devices_per_process < 1:
        parser.error("--devices_per_process must be at least 1")
    if not 0 <= args.port < 65536:
        parser.error("--port must be in 0..65535")
    args.command = command
    return args


def program_argv(python: str, command: list[str]) -> list[str]:
    """The argv of one process: python + the command, or + `-m laser_jax.train` + arguments."""
    first = command[0] if command else ""
    if first in ("-m", "-c") or (first.endswith(".py") and not first.startswith("-")):
        return [python, *command]
    return [python, *DEFAULT_COMMAND, *command]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_device_count(xla_flags: str, count: int) -> str:
    """XLA_FLAGS with any device-count flag replaced by ours."""
    kept = [f for f in xla_flags.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])


def process_env(args: argparse.Namespace, port: int, index: int) -> dict[str, str]:
    """The variables that process `index` gets on top of the launcher's environment."""
    return {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(args.num_processes),
        "JAX_PROCESS_ID": str(index),
        "JAX_PLATFORMS": args.platforms,
        "XLA_FLAGS": with_device_count(os.environ.get("XLA_FLAGS", ""), args.devices_per_process),
        "PYTHONUNBUFFERED": "1",
    }


class Launcher:
    def __init__(self, argv: list[str], envs: list[dict[str, str]]):
        self.argv = argv
        self.envs = envs
        self.procs: list[subprocess.Popen] = []
        self.readers: list[threading.Thread] = []
        self.print_lock = threading.RLock()  # re-entrant: signal handlers print too
        self.interrupts = 0
        self.received: int | None = None  # the first signal forwarded, if any

    def say(self, message: str) -> None:
        with self.print_lock:
            print(f"local.py: {message}", file=sys.stderr, flush=True)

    def _pump(self, index: int, stream) -> None:
        prefix = f"[p{index}] "
        for line in stream:
            with self.print_lock:
                sys.stdout.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
                sys.stdout.flush()
        stream.close()

    def start(self) -> None:
        for i, extra in enumerate(self.envs):
            proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **extra},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                # Own session: a Ctrl-C in the terminal reaches the children once, through us.
                start_new_session=True,
            )
            self.procs.append(proc)
            reader = threading.Thread(target=self._pump, args=(i, proc.stdout), daemon=True)
            reader.start()
            self.readers.append(reader)

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def on_signal(self, sig: int, _frame) -> None:
        self.interrupts += 1
        self.received = self.received or sig
        if sig == signal.SIGINT and self.interrupts > 1:
            self.say("second interrupt: killing all processes")
            self.signal_all(signal.SIGKILL)
        else:
            self.say(f"got {signal.Signals(sig).name}, forwarding it to all processes")
            self.signal_all(sig)

    def stop_all(self) -> None:
        """SIGTERM the running processes, SIGKILL those still alive after a grace period."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.signal_all(signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def wait(self, timeout: float | None) -> int:
        """Wait for all processes; the launcher's exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        code = 0
        while True:
            codes = [p.poll() for p in self.procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, c = failed[0]
                how = f"exit code {c}" if c > 0 else f"signal {signal.Signals(-c).name}"
                running = [j for j, c2 in enumerate(codes) if c2 is None]
                self.say(f"process {i} (pid {self.procs[i].pid}) failed with {how}"
                         + (f"; terminating processes {running}" if running else ""))
                self.stop_all()
                code = c if c > 0 else 128 - c
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                self.say(f"timeout after {timeout:g} s; terminating all processes")
                self.stop_all()
                code = 124
                break
            time.sleep(0.05)
        for reader in self.readers:
            reader.join(timeout=5)
        if code == 0 and self.received:
            code = 128 + self.received  # interrupted, even if the processes exited cleanly
        return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    port = args.port or free_port()
    command = program_argv(args.python, args.command)
    envs = [process_env(args, port, i) for i in range(args.num_processes)]

    if args.dry_run:
        for env in envs:
            print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command))
        return 0

    launcher = Launcher(command, envs)
    previous = {s: signal.signal(s, launcher.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            launcher.start()
        except BaseException:
            launcher.stop_all()
            raise
        return launcher.wait(args.timeout)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
