"""The generated tasks, one module each, written in one layout (layout.py).

  arithmetic   multi-step arithmetic over numbers (arithmetic*.py; ~8 reasoning tokens a step)
  hops         relation hops over named entities, one token a step (hops*.py)

A task module has NAME, VERSION, an `Options` dataclass (its generator options, recorded in
meta.json), `build(options, seed) -> layout.TaskData` and `tokenizer_writer(options)`.
`laser_jax.data.synthetic` is the command line and `ensure_generated` the API over them.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Dict

from laser_jax.data.tasks import arithmetic, hops

DEFAULT_TASK = "arithmetic"  # what `python -m laser_jax.data.synthetic` and data.synthetic_task make by default
TASKS: Dict[str, ModuleType] = {arithmetic.NAME: arithmetic, hops.NAME: hops}


def task_module(name: str) -> ModuleType:
    """The task module called `name`; ValueError naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return TASKS[name]


def make_options(name: str, **options):
    """The task's Options from keyword options; ValueError naming an option the task lacks."""
    cls = task_module(name).Options
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"the {name} task has no option(s) {', '.join(unknown)} "
                         f"(its options: {', '.join(sorted(known))})")
    return cls(**options)


def parse_options(name: str, text: str) -> dict:
    """Options from "key=value,key=value" (the data.synthetic_options config field) as the
    task's field types; ValueError naming a bad entry."""
    cls = task_module(name).Options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"{item!r}: expected key=value with key one of {', '.join(sorted(fields))} "
                             f"(options of the {name} task)")
        out[key] = _convert(fields[key], value.strip())
    make_options(name, **out)  # the task's own checks
    return out


def _convert(field: dataclasses.Field, value: str):
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if kind == "bool":
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{field.name}={value!r}: expected true or false")
        return value.lower() in ("true", "1")
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{field.name}={value!r}: expected an integer") from None
    return value
