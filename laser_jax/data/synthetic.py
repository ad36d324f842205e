"""Generate a task: the embedded default (arithmetic) or the entity-hops task.

    python -m laser_jax.data.synthetic --out=DIR --seed=S [--task=arithmetic|hops] [task options]

Tasks live in laser_jax/data/tasks/ (one module each; `tasks.DEFAULT_TASK` is what a command
without --task makes) and are written in one layout (tasks/layout.py: train.jsonl,
train_chains.jsonl, corpus.jsonl, eval/ and dev/ by number of reasoning steps, reasoning.jsonl,
chains.jsonl, tokenizer/, meta.json with the task, its options and a content hash, and
manifest.json: every file's size and sha256, written last by laser_jax.storage). The same
task, seed and options give byte-identical files. Every option of a task is a flag; an option
the chosen task lacks is an error. Prints the paths, counts and token lengths as JSON.

`ensure_generated(dir, seed, task, **options)` is the API the trainer, the pretraining stage
and the ablation use: it reuses an intact generation of the same task, seed and options and
otherwise (re)generates, saying what it replaces (a damaged file is named; temporary
directories of interrupted generations beside it are removed). The command holds a lock on
--out (one writer per output).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags

from laser_jax import storage, workdir_lock
from laser_jax.cli import define_help, run_cli
from laser_jax.data.errors import ConfigError
from laser_jax.data.tasks import DEFAULT_TASK, TASKS, make_options, parse_options, task_module
from laser_jax.data.tasks.layout import (content_hash, paths, paths_from_meta, read_meta,  # noqa: F401 (API)
                                         replace_dir, write)

log = logging.getLogger("laser_jax")
TMP_PREFIX = ".synthetic-"  # a generation's temporary directory beside its output


def generate(out_dir: str, seed: int = 0, task: str = DEFAULT_TASK, **options) -> dict:
    """Generate the task into `out_dir` (replacing an earlier generation there).

    Args:
      out_dir: target directory; must be missing, empty, or an earlier output (has meta.json).
      seed: integer seed; same task, seed and options give byte-identical files.
      task: a name of `tasks.TASKS`.
      **options: fields of the task's Options.

    Returns:
      dict of paths (see `tasks.layout.paths`).
    """
    module = task_module(task)
    opts = make_options(task, **options)
    seed = int(seed)
    data = module.build(opts, seed)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + storage.owner_tag(), dir=parent)
    try:
        write(data, tmp, task=task, version=module.VERSION, seed=seed, options=dataclasses.asdict(opts),
              save_tokenizer=module.tokenizer_writer(opts, data))
        storage.write_manifest(tmp)  # issue 27: what was written, last (the directory is renamed into place)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths_from_meta(out_dir, read_meta(out_dir))


def _task_of(meta: dict) -> str:
    return meta.get("task", "arithmetic")  # generations before the hops task hold no "task"


def is_current(out_dir: str, seed: int = 0, task: str = DEFAULT_TASK, **options) -> bool:
    """True if `out_dir` holds an intact generation for this task, seed, options and version."""
    meta = read_meta(out_dir)
    want = dataclasses.asdict(make_options(task, **options))
    return (meta is not None and _task_of(meta) == task and meta.get("version") == task_module(task).VERSION
            and meta.get("seed") == int(seed) and meta.get("options") == want
            and meta.get("content_sha256") == content_hash(out_dir))


def describe(meta: Optional[dict]) -> str:
    """"the hops task (seed 0, options {...})" of a meta.json."""
    if meta is None:
        return "no generated task"
    return f"the {_task_of(meta)} task (seed {meta.get('seed')}, options {meta.get('options')})"


def ensure_generated(out_dir: str, seed: int = 0, task: str = DEFAULT_TASK, **options) -> dict:
    """Paths of the task in `out_dir`, generating it first if missing, stale or damaged
    (a generation of another task, seed or options is replaced, and the log says so; a damaged
    file is named in a warning; temporary directories of interrupted generations beside
    `out_dir` are removed)."""
    for left in storage.remove_leftovers(os.path.dirname(os.path.abspath(out_dir)), TMP_PREFIX):
        log.warning("removed %s, left by an interrupted task generation", left)
    if is_current(out_dir, seed, task, **options):
        check = storage.verify_manifest(out_dir)
        if not check.intact:  # the files verify by meta.json's content hash: the manifest is what is wrong
            for damage in check.damaged:
                log.warning("%s; the task's files are intact (meta.json's content hash): writing it again", damage)
            storage.write_manifest(out_dir)
        return paths_from_meta(out_dir, read_meta(out_dir))
    for damage in storage.verify_manifest(out_dir).damaged:
        log.warning("%s; generating the task again from its seed", damage)
    old = read_meta(out_dir)
    if old is not None:
        want = {"task": task, "seed": int(seed), "options": dataclasses.asdict(make_options(task, **options))}
        same = all(old.get(k) == v for k, v in want.items() if k != "task") and _task_of(old) == task
        log.warning("%s holds %s; %s", out_dir, describe(old),
                    "its files are damaged: generating it again" if same else
                    f"generating {describe(want)} in its place")
    return generate(out_dir, seed, task, **options)


def config_args(data_config) -> dict:
    """{"seed", "task", **options} of a run config's data section (data.synthetic_seed,
    data.synthetic_task, data.synthetic_options "key=value,..."), for ensure_generated."""
    task = data_config.get("synthetic_task", DEFAULT_TASK) or DEFAULT_TASK
    if task not in TASKS:
        raise ConfigError(f"data.synthetic_task: unknown task {task!r} (known: {', '.join(sorted(TASKS))})")
    try:
        options = parse_options(task, data_config.get("synthetic_options", "") or "")
    except ValueError as e:
        raise ConfigError(f"data.synthetic_options: {e}") from None
    return {"seed": int(data_config.synthetic_seed), "task": task, **options}


# ----------------------------------------------------------------------------------- CLI
_DEFINE = {bool: flags.DEFINE_boolean, "bool": flags.DEFINE_boolean, int: flags.DEFINE_integer,
           "int": flags.DEFINE_integer, str: flags.DEFINE_string, "str": flags.DEFINE_string}


def _option_fields() -> dict:
    """{option name: (type, {task: default})} over every task's Options."""
    out = {}
    for name, module in sorted(TASKS.items()):
        for field in dataclasses.fields(module.Options):
            kind, defaults = out.setdefault(field.name, (field.type, {}))
            if str(kind) != str(field.type):
                raise TypeError(f"option {field.name}: {kind} in one task, {field.type} in {name}")
            defaults[name] = field.default
    return out


def _define_flags() -> flags.FlagValues:
    """--out, --seed, --task and one flag per option of any task (unset: the task's default)."""
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "output directory", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "generator seed (same task, seed and options: byte-identical files)",
                         flag_values=fv)
    flags.DEFINE_enum("task", DEFAULT_TASK, sorted(TASKS), "which task to generate", flag_values=fv)
    for name, (kind, defaults) in _option_fields().items():
        doc = "; ".join(f"{task} task: default {value!r}" for task, value in defaults.items())
        _DEFINE[kind](name, None, doc, flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)
    define_help(fv)
    return fv


FLAGS = _define_flags()


def _command(f: flags.FlagValues) -> str:
    fields = _option_fields()
    given = {name: f[name].value for name in fields if f[name].present}
    foreign = sorted(name for name in given if f.task not in fields[name][1])
    if foreign:
        raise ValueError(f"--{', --'.join(foreign)}: not an option of the {f.task} task (its options: "
                         f"{', '.join(sorted(n for n, (_, d) in fields.items() if f.task in d))})")
    with workdir_lock.held(f.out, "--out", inside=False):  # issue 24: one writer per output
        result = generate(f.out, f.seed, f.task, **given)
    meta = read_meta(f.out)
    return json.dumps({"paths": result, "counts": meta["counts"], "token_lengths": meta["token_lengths"]}, indent=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Prints the paths, counts and token
    lengths as JSON; returns the exit status (a bad option is a usage error, exit 2)."""
    return run_cli(FLAGS, _command, argv, allow_arguments=False,
                   expected_errors=(ValueError, FileExistsError, workdir_lock.LockError))


if __name__ == "__main__":
    sys.exit(main())
