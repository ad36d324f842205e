"""Training across two real JAX processes (launch/local.py, CPU collectives over gloo):
the same losses as one process, metrics written once, and a checkpoint written by 2
processes x 2 devices that resumes on 1 process x 1 device (Orbax reshards) to the
losses of an uninterrupted run."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from laser_jax.data.synthetic import ensure_generated
from laser_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.py")
LOSS_KEYS = ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid", "l2_grads")

CONFIG = '''
from laser_jax.train.config import base_config


def get_config():
    c = base_config()
    for section, values in {settings!r}.items():
        for field, value in values.items():
            setattr(getattr(c, section), field, value)
    return c
'''


def write_config(path, task):
    """A small run (as tests/test_train.py's small_config) as a config file for the CLI."""
    settings = {
        "model": dict(preset="tiny_qwen3", vocab_size=768, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      tokenizer=task["tokenizer"], compute_dtype="float32", scan_layers=False),
        "lora": dict(rank=0, dropout=0.0),
        "data": dict(train_files=task["train"], chat_template=False, query_max_len=64, doc_max_len=48,
                     explicit_max_len=128, bucket_fractions=(1.0,), shuffle=True, num_threads=1),
        "train": dict(batch_size=8, num_steps=4, log_every=1, learning_rate=1e-4, warmup_ratio=0.0),
        "checkpoint": dict(every_steps=2, async_save=False),
    }
    path.write_text(CONFIG.format(settings=settings))
    return str(path)


def run(cmd, timeout=420):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def train_one_process(config, workdir):
    return run([sys.executable, "-m", "laser_jax.train", f"--config={config}", f"--workdir={workdir}",
                "--config.mesh.num_devices=1", "--config.mesh.shape=(1,1,1)"])


def losses(rows):
    return np.array([[r[k] for k in LOSS_KEYS] for r in rows])


def assert_same_losses(rows, reference):
    """Within 1e-5 relative; the small KL terms (~0.3) also within 1e-5 absolute, the float32
    noise of reductions split differently over devices and processes."""
    np.testing.assert_allclose(losses(rows), losses(reference), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return ensure_generated(str(tmp_path_factory.mktemp("task")), seed=0, n_train=64, n_eval_per_domain=4)


def test_two_processes_train_like_one_and_their_checkpoint_resumes_on_one_device(task, tmp_path):
    config = write_config(tmp_path / "small.py", task)
    one = tmp_path / "one"
    train_one_process(config, one)
    reference = read_metrics(str(one))
    assert [r["step"] for r in reference] == [1, 2, 3, 4]

    # 2 processes x 2 devices, FSDP over all 4: every parameter is split across processes.
    two = tmp_path / "two"
    proc = run([sys.executable, LOCAL, "-n", "2", "--devices_per_process=2", "--timeout=400", "--",
                f"--config={config}", f"--workdir={two}", "--config.mesh.num_devices=0",
                "--config.mesh.shape=(1,4,1)"], timeout=450)
    assert "[p0]" in proc.stdout and "[p1]" in proc.stdout
    assert "process 1 of 2, 2 local / 4 global devices" in proc.stdout
    rows = read_metrics(str(two))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # written once, by process 0
    assert_same_losses(rows, reference)
    assert sorted(os.listdir(two / "checkpoints")) == ["2", "4"]
    data = set(os.listdir(two / "checkpoints" / "2" / "data"))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data

    # Resume the 2-process checkpoint of step 2 in 1 process on 1 device.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    out = train_one_process(config, resumed)
    assert "resumed from step 2" in out.stderr + out.stdout
    rows = read_metrics(str(resumed))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert_same_losses(rows[2:], reference[2:])
    assert sorted(os.listdir(resumed / "checkpoints")) == ["2", "4"]
    assert json.load(open(resumed / "checkpoints" / "4" / "data" / "process_0-of-1.json"))["next_index"] == 4


def test_a_second_job_on_a_held_workdir_is_refused_on_every_process(task, tmp_path):
    """Issue 24: process 0 takes the workdir's lock for its job and tells the others; a job
    started on a workdir another run holds stops on every process, naming the holder."""
    from test_workdir_lock import held_elsewhere

    config = write_config(tmp_path / "small.py", task)
    workdir = tmp_path / "w"
    with held_elsewhere([str(workdir), True]) as pid:
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, LOCAL, "-n", "2", "--timeout=300", "--", f"--config={config}",
                               f"--workdir={workdir}", "--config.mesh.num_devices=0", "--config.mesh.shape=(1,2,1)"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    for prefix in ("[p0] ", "[p1] "):
        errors = [line for line in proc.stdout.splitlines() if line.startswith(prefix + "error:")]
        assert len(errors) == 1 and f"error: --workdir: {workdir} is in use by pid {pid} on host" in errors[0], out
    assert "compiling" not in out and os.listdir(workdir) == [".laser_jax.lock"]
