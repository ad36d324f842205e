"""The launchers in launch/: dry runs print the right commands, those commands do what they
should when run against fake gcloud / sbatch / srun / python, and bad arguments are refused."""
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "slurm_gpu.sh"
LOCAL = REPO / "launch" / "local.py"


def run(argv, env=None, timeout=60, **kw):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(autouse=True)
def no_real_cloud_tools(tmp_path_factory, monkeypatch):
    """gcloud / sbatch / srun on PATH are stubs that fail, in case a test runs a command for real."""
    stubs = tmp_path_factory.mktemp("stubs")
    for name in ("gcloud", "sbatch", "srun"):
        write_exe(stubs / name, f"#!/bin/sh\necho 'test ran the real {name}' >&2\nexit 99\n")
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    monkeypatch.delenv("GCLOUD", raising=False)
    monkeypatch.delenv("LASER_SBATCH", raising=False)


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ---------------------------------------------------------------- TPU pod ----

TPU_ARGS = ["--name=pod1", "--zone=us-central2-b", "--project=proj", "--config=configs/base.py:small",
            "--workdir=gs://bucket/runs/a"]


def tpu_dry_run(*extra):
    out = run(["bash", TPU, "--dry_run", *TPU_ARGS, *extra])
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def remote_command(line):
    [cmd] = [w[len("--command="):] for w in shlex.split(line) if w.startswith("--command=")]
    return cmd


def test_tpu_dry_run_prints_create_copy_install_and_run_on_all_workers():
    lines = tpu_dry_run("--create", "--accelerator_type=v5p-32", "--version=v2-alpha-tpuv5", "--spot",
                        "--config.train.steps=7", "--", "--flag", "a b")
    create, tar, scp, unpack, install, train = lines
    assert shlex.split(create) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1", "--zone=us-central2-b",
                                   "--project=proj", "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5", "--spot"]
    assert tar.startswith("tar -czf ") and f"-C {REPO} ." in tar and "--exclude=./.git" in tar
    assert scp.startswith("gcloud compute tpus tpu-vm scp ") and "pod1:laser_jax_code.tgz" in scp
    for line in (scp, unpack, install, train):
        assert "--worker=all" in shlex.split(line) and "--zone=us-central2-b" in line
    assert "tar -xzf laser_jax_code.tgz" in remote_command(unpack)
    install_cmd = remote_command(install)
    assert "pip install -r requirements.txt 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html" in install_cmd
    assert shlex.split(train)[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
    train_cmd = remote_command(train)
    assert ("python3 -m laser_jax.train --config=configs/base.py:small --workdir=gs://bucket/runs/a "
            "--config.train.steps=7 --flag 'a b'") in train_cmd


def test_tpu_git_code_venv_detach_and_helpers():
    lines = tpu_dry_run("--git_url=https://example.com/laser_jax.git", "--git_ref=v1", "--venv=lj", "--detach")
    assert len(lines) == 3
    assert "git clone --quiet https://example.com/laser_jax.git laser_jax" in remote_command(lines[0])
    assert "fetch --quiet origin v1" in remote_command(lines[0])
    assert "-m venv ~/lj && ~/lj/bin/python -m pip install" in remote_command(lines[1])
    assert "nohup ~/lj/bin/python -m laser_jax.train" in remote_command(lines[2])
    assert tpu_dry_run("--skip_code", "--skip_install")[0].startswith("gcloud compute tpus tpu-vm ssh pod1")
    for flag, expected in [("--delete", "tpu-vm delete pod1"), ("--logs", "--worker=0"), ("--stop", "pkill")]:
        out = run(["bash", TPU, "--dry_run", "--name=pod1", "--zone=z", flag])
        assert out.returncode == 0 and expected in out.stdout, out.stderr


@pytest.mark.parametrize("accel", ["v4-32", "v5litepod-16", "v6e-64", None])
def test_tpu_refuses_local_workdir_on_multi_host(accel):
    args = ["--dry_run", "--name=pod1", "--zone=z", "--config=c.py", "--workdir=runs/a"]
    if accel:
        args.append(f"--accelerator_type={accel}")
    out = run(["bash", TPU, *args])
    assert out.returncode != 0 and out.stdout == ""
    assert "gs://" in out.stderr and "runs/a" in out.stderr


@pytest.mark.parametrize("accel", ["v4-8", "v5p-8", "v5litepod-8", "v6e-4"])
def test_tpu_allows_local_workdir_on_single_host(accel):
    out = run(["bash", TPU, "--name=pod1", "--zone=z", "--config=c.py", "--workdir=runs/a", "--skip_code",
               "--skip_install", f"--accelerator_type={accel}", "--dry_run"])
    assert out.returncode == 0, out.stderr
    assert '--workdir="$HOME"/runs/a' in remote_command(out.stdout)


@pytest.mark.parametrize("drop, extra, message", [
    ("--name=pod1", [], "--name"),
    ("--zone=us-central2-b", [], "--zone"),
    ("--config=configs/base.py:small", [], "--config"),
    ("--workdir=gs://bucket/runs/a", [], "--workdir"),
    (None, ["--create", "--version=x"], "--accelerator_type"),
    (None, ["--create", "--accelerator_type=v4-8"], "--version"),
    (None, ["--bogus=1"], "--bogus"),
])
def test_tpu_missing_or_bad_arguments(drop, extra, message):
    args = [a for a in TPU_ARGS if a != drop] + extra
    out = run(["bash", TPU, "--dry_run", *args])
    assert out.returncode != 0 and out.stdout == ""
    assert "error" in out.stderr and message in out.stderr


def test_tpu_commands_work_against_a_fake_one_worker_pod(tmp_path):
    """Runs the real (non-dry) script with a fake gcloud that plays one worker in a temp home,
    so the remote commands' quoting is exercised; checks it matches the dry run."""
    home, bin_dir, tmp = tmp_path / "home", tmp_path / "bin", tmp_path / "tmp"
    for d in (home, bin_dir, tmp):
        d.mkdir()
    calls, py_log = tmp_path / "gcloud.jsonl", tmp_path / "python.log"
    gcloud = write_exe(bin_dir / "fake_gcloud", f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
home = {str(home)!r}
if args[3] == "scp":
    shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
elif args[3] == "ssh":
    [cmd] = [a[len("--command="):] for a in args if a.startswith("--command=")]
    sys.exit(subprocess.call(["bash", "-c", cmd], cwd=home, env={{**os.environ, "HOME": home}}))
""")
    write_exe(bin_dir / "python3", f"""#!/bin/bash
{{ echo "call cwd=$PWD B=${{B-}}"; printf 'arg=%s\\n' "$@"; }} >> {py_log}
""")
    env = {"GCLOUD": str(gcloud), "TMPDIR": str(tmp), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    args = [*TPU_ARGS, "--create", "--accelerator_type=v4-16", "--version=rt", "--env=B=it's here",
            "--config.model.name=x y"]

    dry = run(["bash", TPU, "--dry_run", *args], env=env)
    assert dry.returncode == 0, dry.stderr
    out = run(["bash", TPU, *args], env=env)
    assert out.returncode == 0, out.stderr + out.stdout

    executed = [json.loads(line) for line in calls.read_text().splitlines()]
    printed = [shlex.split(line) for line in dry.stdout.splitlines()]
    assert [[str(gcloud), *argv] for argv in executed] == [p for p in printed if p[0] != "tar"]

    with tarfile.open(tmp / "laser_jax_code-pod1.tgz") as tar:
        names = tar.getnames()
    assert "./launch/tpu_pod.sh" in names and not any(n.startswith("./.git/") for n in names)
    assert (home / "laser_jax" / "launch" / "tpu_pod.sh").is_file()
    log = py_log.read_text()
    assert "arg=install" in log and "arg=jax[tpu]" in log
    train = log[log.index("arg=laser_jax.train"):]
    assert f"call cwd={home}/laser_jax B=it's here" in log
    assert "arg=--config=configs/base.py:small\narg=--workdir=gs://bucket/runs/a\narg=--config.model.name=x y" in train
    assert (home / "laser_jax_train.log").exists()


# ---------------------------------------------------------------- SLURM ----

SLURM_ARGS = ["--config=configs/base.py", "--workdir=/shared/runs/b"]


def slurm_dry_run(*extra, script=None):
    argv = ["bash", SLURM, "--dry_run", *SLURM_ARGS]
    if script:
        argv.append(f"--script={script}")
    out = run([*argv, *extra])
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_slurm_dry_run_prints_sbatch_script_and_submit():
    text = slurm_dry_run("--nodes=4", "--partition=gpu", "--account=acct", "--time=12:00:00",
                         "--venv=/shared/venv", "--env=NCCL_SOCKET_IFNAME=ib0", "--config.train.lr=0.1",
                         script="/tmp/job.sbatch")
    lines = text.splitlines()
    assert lines[0] == (f"env -C {REPO} JAX_PLATFORMS=cpu /shared/venv/bin/python -m laser_jax.train --check "
                        "--config=configs/base.py --workdir=/shared/runs/b --config.train.lr=0.1")
    assert lines[1].startswith("mkdir -p ")
    assert lines[2] == "cat > /tmp/job.sbatch <<'LASER_JAX_SBATCH_EOF'"
    assert lines[-2] == "LASER_JAX_SBATCH_EOF" and lines[-1] == "sbatch /tmp/job.sbatch"
    for expected in ["#!/bin/bash", "#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                     "#SBATCH --partition=gpu", "#SBATCH --account=acct", "#SBATCH --time=12:00:00",
                     "source /shared/venv/bin/activate", "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
                     "export NCCL_SOCKET_IFNAME=ib0", "export LASER_GPUS_PER_PROC=1"]:
        assert expected in lines, expected
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in lines[srun]
    assert lines[srun + 2].strip() == ("python -m laser_jax.train --config=configs/base.py "
                                       "--workdir=/shared/runs/b --config.train.lr=0.1")


def test_slurm_one_process_per_node_and_container():
    text = slurm_dry_run("--procs_per_node=1", "--gpus_per_node=4", "--container=nvcr.io/nvidia/jax:x")
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=4" in text
    assert "export LASER_GPUS_PER_PROC=4" in text
    assert f"--container-image=nvcr.io/nvidia/jax:x --container-mounts={REPO}:{REPO}" in text


def test_slurm_generated_job_runs_with_fake_sbatch_and_srun(tmp_path):
    """Executes the dry run's output with a fake sbatch (runs the script) and srun (runs the tasks
    of one node): each task must get its own GPUs in JAX_LOCAL_DEVICE_IDS and the train command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "tasks.log"
    write_exe(bin_dir / "sbatch", """#!/bin/bash
export SLURM_JOB_ID=42 SLURM_JOB_NODELIST=node1 SLURM_NTASKS_PER_NODE
SLURM_NTASKS_PER_NODE=$(sed -n 's/^#SBATCH --ntasks-per-node=//p' "$1")
export SLURM_NTASKS=$SLURM_NTASKS_PER_NODE
exec bash "$1"
""")
    write_exe(bin_dir / "srun", """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS_PER_NODE; i++)); do SLURM_LOCALID=$i SLURM_PROCID=$i "$@" || exit; done
""")
    fake_python = write_exe(bin_dir / "fake_python", f"""#!/bin/bash
echo "local=$SLURM_LOCALID ids=$JAX_LOCAL_DEVICE_IDS mem=$XLA_PYTHON_CLIENT_MEM_FRACTION cwd=$PWD args=$*" >> {log}
""")
    script = tmp_path / "sub" / "job.sbatch"
    text = slurm_dry_run("--gpus_per_node=4", "--procs_per_node=2", f"--python={fake_python}",
                         f"--log_dir={tmp_path / 'logs'}", "--setup=echo setup-ran", "--skip_check", "--", "--x", "a b",
                         script=script)
    out = run(["bash", "-c", text], env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "setup-ran" in out.stdout
    assert (tmp_path / "logs").is_dir() and script.is_file()
    assert log.read_text().splitlines() == [
        f"local={i} ids={ids} mem=0.9 cwd={REPO} args=-m laser_jax.train --config=configs/base.py "
        "--workdir=/shared/runs/b --x a b" for i, ids in [(0, "0,1"), (1, "2,3")]]


def test_slurm_submit_writes_the_printed_script(tmp_path):
    fake = write_exe(tmp_path / "sbatch", f"#!/bin/bash\ncp \"$1\" {tmp_path}/submitted\n")
    script = tmp_path / "job.sbatch"
    args = ["bash", SLURM, *SLURM_ARGS, f"--script={script}", f"--log_dir={tmp_path}", "--skip_check"]
    out = run(args, env={"LASER_SBATCH": str(fake)})
    assert out.returncode == 0, out.stderr
    dry = run([*args[:2], "--dry_run", *args[2:]], env={"LASER_SBATCH": str(fake)}).stdout.splitlines()
    body = dry[dry.index(f"cat > {script} <<'LASER_JAX_SBATCH_EOF'") + 1:-2]
    assert (tmp_path / "submitted").read_text().splitlines() == body


def test_slurm_checks_the_config_before_writing_or_submitting_the_job(tmp_path):
    """The config is validated on the login node (`laser_jax.train --check`): a bad one is
    refused with the check's message, before the sbatch script is written or sbatch runs."""
    fake = write_exe(tmp_path / "sbatch", f"#!/bin/bash\ncp \"$1\" {tmp_path}/submitted\n")
    script = tmp_path / "job.sbatch"
    base = ["bash", SLURM, f"--workdir={tmp_path / 'run'}", f"--script={script}", f"--log_dir={tmp_path}",
            f"--check_python={sys.executable}"]
    for bad, message in [(["--config=configs/qwen7b.py"], "data.train_files: empty"),
                         (["--config=configs/tiny.py", "--config.train.batchsize=4"], 'did you mean "batch_size"')]:
        out = run([*base, *bad], env={"LASER_SBATCH": str(fake)}, timeout=300)
        assert out.returncode == 2 and message in out.stderr and "nothing was submitted" in out.stderr, out.stderr
        assert not script.exists() and not (tmp_path / "submitted").exists()
    assert "model.tokenizer: empty" in run([*base, "--config=configs/qwen7b.py"], timeout=300).stderr  # all at once
    out = run([*base, "--config=configs/tiny.py:smoke"], env={"LASER_SBATCH": str(fake)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "config OK: configs/tiny.py:smoke" in out.stderr and (tmp_path / "submitted").is_file()
    assert not (tmp_path / "run").exists()  # the check writes nothing


@pytest.mark.parametrize("args, message", [
    (["--workdir=w"], "--config"),
    (["--config=c"], "--workdir"),
    ([*SLURM_ARGS, "--procs_per_node=3"], "divide"),
    ([*SLURM_ARGS, "--nodes=0"], "--nodes"),
    ([*SLURM_ARGS, "--nodes"], "needs a value"),
    ([*SLURM_ARGS, "--env=novalue"], "KEY=VALUE"),
])
def test_slurm_missing_or_bad_arguments(args, message):
    out = run(["bash", SLURM, "--dry_run", *args])
    assert out.returncode != 0 and out.stdout == ""
    assert message in out.stderr


# ---------------------------------------------------------------- local ----

def test_local_dry_run_prints_env_per_process(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the test session sets its own
    out = run([sys.executable, LOCAL, "-n", "3", "--devices_per_process=2", "--port=12345", "--dry_run", "--",
               "--config=configs/tiny.py", "--workdir=runs/x"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:6])
        assert env == {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12345", "JAX_NUM_PROCESSES": "3",
                       "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONUNBUFFERED": "1"}
        assert words[6:] == [sys.executable, "-m", "laser_jax.train", "--config=configs/tiny.py", "--workdir=runs/x"]


def test_local_runs_processes_and_prefixes_output(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the test session sets its own
    code = "import os; print('id=' + os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], os.environ['XLA_FLAGS'])"
    out = run([sys.executable, LOCAL, "-n", "2", "--devices_per_process=3", "--", "-c", code])
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [
        f"[p{i}] id={i} 2 --xla_force_host_platform_device_count=3" for i in range(2)]


def test_local_propagates_a_failure_and_stops_the_others():
    code = ("import os, sys, time\n"
            "if os.environ['JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(60)")
    start = time.monotonic()
    out = run([sys.executable, LOCAL, "-n", "2", "--", "-c", code])
    assert out.returncode == 3
    assert "process 1" in out.stderr and "exit code 3" in out.stderr
    assert time.monotonic() - start < 20


def test_local_forwards_sigterm():
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(0)))\n"
            "print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, str(LOCAL), "-n", "2", "--", "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = {proc.stdout.readline().strip() for _ in range(2)}
        assert ready == {"[p0] ready", "[p1] ready"}
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(rest.splitlines()) == ["[p0] term", "[p1] term"]
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM" in err


def test_local_missing_arguments():
    out = run([sys.executable, LOCAL, "--dry_run"])
    assert out.returncode != 0 and "--num_processes" in out.stderr


def test_local_jax_distributed_across_two_processes():
    """The launcher's variables are enough for jax.distributed.initialize on CPU."""
    code = ("import os, jax\n"
            "jax.distributed.initialize(num_processes=int(os.environ['JAX_NUM_PROCESSES']),\n"
            "                           process_id=int(os.environ['JAX_PROCESS_ID']))\n"
            "print('devices', jax.process_index(), jax.local_device_count(), jax.device_count())")
    out = run([sys.executable, LOCAL, "-n", "2", "--devices_per_process=2", "--timeout=60", "--", "-c", code],
              timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[p0] devices 0 2 4" in out.stdout and "[p1] devices 1 2 4" in out.stdout
