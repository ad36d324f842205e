"""`python -m laser_jax.train` as a user meets it (issue 17): bad configs, workdirs and data are
one "error: ..." line with exit status 2 before anything runs or is written."""
import os
import sys

import pytest

from laser_jax.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the train command in this process (from the repository root); returns
    (exit status, stdout, stderr)."""
    monkeypatch.chdir(ROOT)

    def run(*args):
        argv = ["laser_jax.train", *args]
        monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads overrides from sys.argv
        code = train_main.main(argv)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("override, field, suggestion", [
    ("--config.train.batchsize=4", "train.batchsize", 'did you mean "batch_size"'),
    ("--config.train.learnig_rate=1", "train.learnig_rate", 'did you mean "learning_rate"'),
    ("--config.nosuch.x=3", "nosuch.x", ""),
    ("--config.train.batch_size=abc", "train.batch_size", "abc"),
])
def test_a_config_override_typo_is_one_line_naming_the_field(cli, tmp_path, override, field, suggestion):
    code, _, err = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", override)
    line = one_error_line(err)
    assert code == 2 and field in line and suggestion in line and override in line
    assert not os.path.exists(tmp_path / "w")


def test_an_unknown_config_variant_is_one_line_listing_the_known_ones(cli, tmp_path):
    for config in ("configs/tiny.py:smok", "configs/qwen7b.py:smok"):
        code, _, err = cli(f"--config={config}", f"--workdir={tmp_path / 'w'}")
        line = one_error_line(err)
        assert code == 2 and "unknown variant 'smok'" in line and "known: smoke" in line and config in line


def test_a_missing_config_file_is_one_line_naming_it(cli, tmp_path):
    for extra in ((), ("--config.train.batch_size=3",)):
        code, _, err = cli("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}", *extra)
        line = one_error_line(err)
        assert code == 2 and "configs/nope.py" in line and "No such file" in line
    assert not os.path.exists(tmp_path / "w")


def test_a_real_model_config_without_weights_reports_every_problem_and_what_to_do(cli, tmp_path):
    for check in ((), ("--check",)):
        code, _, err = cli("--config=configs/qwen7b.py", f"--workdir={tmp_path / 'w'}", *check)
        assert code == 2 and "Traceback" not in err
        assert "model.tokenizer: empty" in err and "data.train_files: empty" in err  # both at once
        assert "configs/qwen7b.py needs the Hugging Face model (--config.model.init_from=" in err
        assert "--config=configs/qwen7b.py:smoke runs a tiny random model" in err
        assert not os.path.exists(tmp_path / "w")


def test_check_validates_config_data_and_workdir_without_writing_or_training(cli, tmp_path):
    code, out, err = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", "--check")
    assert code == 0 and out.startswith("config OK: configs/tiny.py: qwen3 "), err
    assert not os.path.exists(tmp_path / "w")
    code, out, err = cli("--config=configs/tiny.py", "--check")  # --workdir is optional with --check
    assert code == 0 and "config OK" in out
    code, _, err = cli("--config=configs/tiny.py:smoke", "--check", f"--config.data.train_files={tmp_path}/none.jsonl")
    assert code == 2 and "none.jsonl" in err and "Traceback" not in err
    code, _, err = cli("--config=configs/tiny.py", "--check", "--config.laser.num_thinking_steps=0")
    assert code == 2 and "laser.num_thinking_steps: must be >= 1" in err
    code, _, err = cli("--config=configs/tiny.py")  # training still needs a workdir
    assert code == 2 and "--workdir is required" in err
