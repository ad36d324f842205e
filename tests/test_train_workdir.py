"""The workdir a run is given (issue 17): a config that cannot resume its checkpoints, or a
workdir that cannot be written, is refused with one "error: ..." line (exit 2) before
anything is written there and before anything is compiled."""
import json
import os

import pytest

from conftest import mounted_tmpfs
from laser_jax.train import faults
from test_reliability import rtask, run_main, tiny_config  # noqa: F401 (rtask: a fixture)


def snapshot(workdir):
    """Every file under `workdir` with its size, modification time and (small files) content."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            st = os.stat(path)
            content = open(path, "rb").read() if st.st_size < 100_000 else b""
            out[os.path.relpath(path, workdir)] = (st.st_size, st.st_mtime_ns, content)
    return out


def test_a_refused_resume_writes_nothing_to_the_workdir(rtask, tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny_config(rtask, **{"train.num_steps": 2})
    code, err = run_main(config, run, capsys)
    assert code == 0, err[-3000:]
    before = snapshot(run)
    assert json.loads((run / "run_config.json").read_text())["model"]["hidden_size"] == 32
    changed = tiny_config(rtask, **{"train.num_steps": 4, "model.hidden_size": 64, "lora.rank": 4})
    code, err = run_main(changed, run, capsys)
    assert code == faults.EXIT_BAD_INPUT
    assert err.startswith(f"error: --workdir: {run} holds checkpoints of another model (step 2 in {run}/checkpoints)")
    assert "model.hidden_size: 64 here, 32 in the checkpoint" in err and "lora.rank: 4 here, 0 in" in err
    assert snapshot(run) == before  # run_config.json, tokenizer/, metrics, checkpoints untouched
    # The same model with other optimizer settings resumes.
    code, err = run_main(tiny_config(rtask, **{"train.num_steps": 4, "train.learning_rate": 5e-4}), run, capsys)
    assert code == 0, err[-3000:]
    assert json.loads((run / "run_config.json").read_text())["train"]["learning_rate"] == 5e-4


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (a tmpfs mounted ro; needs mount rights, skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "read_only", "ro,size=64k") as mount_point:
        yield mount_point


def test_a_read_only_workdir_exits_2_naming_it_before_compiling(rtask, read_only_dir, capsys, caplog):
    for workdir in (read_only_dir, read_only_dir / "run"):  # the workdir itself, or its parent
        with caplog.at_level("INFO", logger="laser_jax"):
            code, err = run_main(tiny_config(rtask), workdir, capsys)
        assert code == faults.EXIT_BAD_INPUT, err[-3000:]
        assert err.startswith(f"error: --workdir: {workdir}: cannot write there (Read-only file system")
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not any("compiling" in r.getMessage() for r in caplog.records)
        caplog.clear()
