"""A full disk during an asynchronous checkpoint save (issue 17): the user sees one message,
naming the step whose save failed, and no Orbax tracebacks (docs/faults.md, exit code 4)."""
import os
import subprocess
import sys

import pytest

from conftest import mounted_tmpfs
from laser_jax.train import faults
from test_reliability import rtask  # noqa: F401 (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI's body with the CLI's logging (absl's handler on stderr), on the tests' small config.
SCRIPT = """
import sys
sys.path.insert(0, "tests")
from absl import logging as absl_logging
from conftest import small_run_config
from laser_jax.train.main import train_main
absl_logging.use_absl_handler()
absl_logging.set_verbosity(absl_logging.INFO)
config = small_run_config({"train": sys.argv[2], "tokenizer": sys.argv[3]}, **{
    "train.num_steps": 6, "checkpoint.every_steps": 2, "checkpoint.async_save": True})
sys.exit(train_main(config, sys.argv[1]))
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs (needs mount rights; skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "small_disk", "size=192k") as mount_point:
        yield mount_point


def test_a_full_disk_in_an_async_save_is_one_message_naming_that_step(rtask, tmp_path, small_disk):
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(small_disk, workdir / "checkpoints")  # step 2's save fills the disk
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), rtask["train"], rtask["tokenizer"]],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == faults.EXIT_DISK_FULL, out.stderr[-5000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: disk full: could not write checkpoint step 2 to {workdir}/checkpoints"), out.stderr[-5000:]
    for noise in ("Traceback", "Exception ignored", "RESOURCE_EXHAUSTED", "Event loop is closed"):
        assert noise not in out.stderr, out.stderr[-5000:]
