"""Running training and evaluation subprocesses `parallel` at a time (the ablation's jobs).

A `Job` is one command line with the JSON file it leaves behind when it succeeded; a job
whose workdir already holds the same command's finished result (and, for a training run,
the same resolved config) is reused instead of run again. With `cpus`, each running job is
pinned to a CPU no other running job holds; a job marked `alone` (one every other job waits
for, such as the ablation's pretrained LM) runs by itself on every CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import shutil
import subprocess
import time
from typing import List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


@dataclasses.dataclass
class Job:
    """One subprocess: a training run, or an evaluation of a trained run (explicit upper bound,
    rewrite-then-retrieve, latency)."""
    name: str                      # e.g. "laser/seed1"
    variant: str
    seed: int
    workdir: str
    argv: List[str]
    result: str                    # JSON file the job leaves behind when it succeeded
    deps: List[str] = dataclasses.field(default_factory=list)
    config: Optional[dict] = None  # a training run's resolved config (config file + overrides)
    cpu: Optional[int] = None      # the CPU the running job is pinned to (run_jobs with cpus)
    owns_workdir: bool = True      # a training run (its workdir is cleared before it starts); False for
                                   # an evaluation writing into another job's workdir
    stem: str = ""                 # names its marker and log in workdir; "" = the result file's name
    alone: bool = False            # runs with no other job beside it, unpinned, with XLA's own threading
                                   # (a job every other one waits for, e.g. the ablation's LM)
    log: str = ""
    returncode: Optional[int] = None
    seconds: float = 0.0
    reused: bool = False
    started: float = 0.0
    proc: Optional[subprocess.Popen] = None

    @property
    def file_stem(self) -> str:
        return self.stem or os.path.splitext(os.path.basename(self.result))[0]

    @property
    def marker(self) -> str:
        return os.path.join(self.workdir, f"ablation_command_{self.file_stem}.json")

    def done_before(self) -> bool:
        """True when the workdir holds this exact command's finished result, trained with the
        same resolved config (an edited config file behind the same command line reruns)."""
        try:
            with open(self.marker) as f:
                marker = json.load(f)
        except (OSError, ValueError):
            return False
        return (marker.get("argv") == self.argv and marker.get("config") == self.config
                and os.path.isfile(self.result))


def child_env(parallel: int, cache_dir: str) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if parallel > 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = f"{flags} {SINGLE_THREAD}".strip()  # one thread per run: `parallel` runs share the cores
    env["XLA_FLAGS"] = flags
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)  # seeds of a variant compile once
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _env_of(job: Job, env: dict) -> dict:
    """A job running alone gets XLA's own threading back (parallel jobs run one thread each)."""
    flags = env.get("XLA_FLAGS", "")
    if not job.alone or SINGLE_THREAD not in flags:
        return env
    return {**env, "XLA_FLAGS": flags.replace(SINGLE_THREAD, "").strip()}


def cpu_slots(parallel: int) -> List[int]:
    """One CPU for each of `parallel` runs when this process may use that many (Linux), else [].

    Pinned single-threaded runs do not contend for a core: on the 2-core machine two tiny-config
    runs took 0.26 / 0.27 s per step pinned against 0.31 / 0.36 s unpinned (0.16 s alone).
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []
    return cpus[:parallel] if parallel > 1 and len(cpus) >= parallel else []


def run_jobs(jobs: List[Job], parallel: int, env: dict, log=print, cpus: Sequence[int] = ()) -> None:
    """Run the jobs, `parallel` at a time, each after its dependencies succeeded; with `cpus`
    (one per parallel run, see cpu_slots) each run is pinned to a CPU no other run holds."""
    by_name = {j.name: j for j in jobs}
    pending = list(jobs)
    running: List[Job] = []
    while pending or running:
        for job in list(running):
            rc = job.proc.poll()
            if rc is None:
                continue
            job.returncode, job.seconds = rc, time.time() - job.started
            job.proc = None
            running.remove(job)
            if rc == 0:
                with open(job.marker, "w") as f:
                    json.dump({"argv": job.argv, "config": job.config, "seconds": job.seconds}, f)
            log(f"[ablate] {job.name}: {'done' if rc == 0 else f'FAILED (exit {rc}), see {job.log}'} "
                f"in {job.seconds:.0f}s")
        for job in list(pending):
            if len(running) >= parallel or any(j.alone for j in running):
                break
            deps = [by_name[d] for d in job.deps if d in by_name]
            if any(d.returncode not in (None, 0) for d in deps):
                job.returncode = -1
                pending.remove(job)
                log(f"[ablate] {job.name}: skipped (a dependency failed)")
                continue
            if any(d.returncode is None for d in deps):
                continue
            if job.alone and running:
                break  # it starts when the running jobs are done; nothing else starts before it
            pending.remove(job)
            if job.done_before():
                job.returncode, job.reused = 0, True
                with open(job.marker) as f:
                    job.seconds = float(json.load(f).get("seconds", 0.0))
                log(f"[ablate] {job.name}: reusing the finished run in {job.workdir}")
                continue
            if job.owns_workdir and os.path.isdir(job.workdir):
                shutil.rmtree(job.workdir)  # stale or different run: start clean
            os.makedirs(job.workdir, exist_ok=True)
            job.log = os.path.join(job.workdir, f"log_{job.file_stem}.txt")
            job.cpu = None if job.alone else next((c for c in cpus if c not in {j.cpu for j in running}), None)
            pin = None if job.cpu is None else functools.partial(os.sched_setaffinity, 0, {job.cpu})
            log(f"[ablate] {job.name}: starting" + (f" on cpu {job.cpu}" if pin else ""))
            with open(job.log, "w") as out:
                out.write(" ".join(shlex.quote(a) for a in job.argv) + "\n")
                out.flush()
                job.proc = subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT, env=_env_of(job, env),
                                            cwd=REPO_ROOT, preexec_fn=pin)
            job.started = time.time()
            running.append(job)
        if running:
            time.sleep(0.5)
