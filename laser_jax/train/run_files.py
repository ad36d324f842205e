"""A training run's own files in its workdir, checked against the manifest its last finished
run wrote (issue 27).

A run that finishes (trained, and evaluated when it evaluates) writes WORKDIR/manifest.json
last: every file of the run (the tokenizer copy, run_config.json, metrics, TensorBoard, the
checkpoints, eval_results.json) with its size and, up to storage.HASH_LIMIT bytes, its
sha256; WORKDIR/data and WORKDIR/lm are stages with manifests of their own. A rerun checks it
before the run rewrites anything there, warns once per damaged file and sets aside what it
rebuilds from what is intact:

  tokenizer/...            removed; the run writes it again from its source
  checkpoints/N/...        step N moved to WORKDIR/corrupt_checkpoints/: training resumes from
                           the newest intact step and redoes the steps after it
  metrics.jsonl            its intact rows are kept, the damaged line left out: the rows it held
                           are lost (training is not redone for them: that would need an
                           earlier checkpoint than the ones kept)
  anything else            written again by the run (run_config.json, eval_results.json, the
                           plot) or kept as it is (TensorBoard reads what it can)

Then the manifest is removed: from here on the workdir is being rewritten, and only the end
of this run writes a new one.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import shutil
import time
from typing import List

import jax

from laser_jax import distributed, storage
from laser_jax.inference.load import CHECKPOINTS, TOKENIZER
from laser_jax.train.checkpoint import CORRUPT
from laser_jax.train.final_eval import RESULTS_FILE
from laser_jax.train.metrics import METRICS_FILE, keep_intact_rows

log = logging.getLogger("laser_jax")


def _part(workdir: str, damaged: str) -> List[str]:
    return os.path.relpath(damaged, workdir).split(os.sep)


def _action(parts: List[str], workdir: str) -> str:
    if parts[0] == TOKENIZER:
        return "the run writes the tokenizer again"
    if parts[0] == CHECKPOINTS and len(parts) > 2:
        return (f"checkpoint step {parts[1]} is moved to {os.path.join(workdir, CORRUPT)}; training resumes from the "
                "newest intact checkpoint and redoes the steps after it")
    if parts == [METRICS_FILE]:
        return "its intact rows are kept; the rows after them are lost"
    return "the run writes it again" if len(parts) == 1 and not parts[0].startswith("tensorboard") else "kept as it is"


def _steps(steps: list) -> str:
    return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else (str(steps[0]) if steps else "none")


def check_and_repair(workdir: str) -> None:
    """Before a run rewrites WORKDIR (module doc); every process calls it, process 0 acts."""
    if "://" in workdir:
        return
    if jax.process_index() == 0:
        check = storage.verify_manifest(workdir)
        steps, removed = set(), set()
        for damage in check.damaged:
            parts = _part(workdir, damage.path)
            if parts[0] == CHECKPOINTS and len(parts) > 2 and not os.path.isdir(os.path.join(workdir, *parts[:2])):
                removed.add(parts[1])  # a whole step removed (by hand, to resume from an earlier one): said once
                continue
            if parts == [METRICS_FILE] and os.path.exists(damage.path):
                kept = keep_intact_rows(workdir)
                log.warning("%s; kept its %d intact row(s) (steps %s); the rows after them are lost (training is "
                            "not redone for them)", damage, len(kept), _steps(kept))
                continue
            log.warning("%s; %s", damage, _action(parts, workdir))
            if parts[0] == TOKENIZER:
                shutil.rmtree(os.path.join(workdir, TOKENIZER), ignore_errors=True)
            elif parts[0] == CHECKPOINTS and len(parts) > 2:
                steps.add(parts[1])
        for step in sorted(removed, key=int):
            log.warning("%s: checkpoint step %s is gone since the run finished; training resumes from the newest "
                        "checkpoint there", os.path.join(workdir, CHECKPOINTS), step)
        for step in sorted(steps, key=int):
            target = os.path.join(workdir, CORRUPT, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(workdir, CHECKPOINTS, step), target)
            log.warning("moved the damaged checkpoint step %s to %s", step, target)
        storage.remove_manifest(workdir)
    if jax.process_count() > 1:
        distributed.wait_for_all_processes("laser_jax/run_files/checked")


def save_tokenizer(tokenizer, target: str) -> None:
    """WORKDIR/tokenizer: the run's tokenizer as loaded (the truncation and padding the data
    pipeline left set on its backend are not saved: the files do not depend on when they
    were written, and a later load does not truncate by default)."""
    tokenizer = copy.deepcopy(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(target)


def _relative_to(value, workdir: str):
    """`value` (a config as JSON) with paths inside WORKDIR written relative to it: a moved or
    copied workdir holds the same run."""
    if isinstance(value, dict):
        return {k: _relative_to(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to(v, workdir) for v in value]
    if isinstance(value, str) and (value == workdir or value.startswith(os.path.join(workdir, ""))):
        return "$WORKDIR" + value[len(workdir):]
    return value


def fingerprint(config, workdir: str) -> dict:
    """What a finished run was made of: its resolved config, and the identity of each input it
    names (a stage directory by its manifest's hash, anything else by its files' sizes and
    modification times; the generated task of a synthetic run is WORKDIR/data)."""
    c = config
    inputs = {"model.init_from": c.model.init_from, "model.tokenizer": c.model.tokenizer,
              "data.train_files": c.data.train_files, "data.eval_dir": c.data.eval_dir,
              "data.lm_corpus": c.data.get("lm_corpus", ""), "laser.teacher_from": c.laser.teacher_from,
              "task": os.path.join(workdir, "data") if c.data.synthetic else ""}
    return {"config": _relative_to(json.loads(c.to_json()), os.path.abspath(workdir)),
            "inputs": {k: _identity(v) for k, v in sorted(inputs.items()) if v}}


def _identity(path: str):
    if "://" in path:
        return path
    stage = next((d for d in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path)))
                  if os.path.isfile(os.path.join(d, storage.MANIFEST))), None)
    if stage is not None:  # a stage's directory or a file in it: by the stage's manifest (content, not place)
        if not storage.verify_manifest(stage).intact:
            return {"damaged": True}  # never equal to a recorded identity: the run does not skip
        return {"manifest_sha256": storage.manifest_entry(os.path.join(stage, storage.MANIFEST), True)["sha256"],
                "in": os.path.relpath(path, stage)}
    found = []
    for match in sorted(glob.glob(path)) or [path]:
        walk = os.walk(match) if os.path.isdir(match) else [(os.path.dirname(match), [], [os.path.basename(match)])]
        for root, dirs, files in walk:
            dirs.sort()
            for name in sorted(files):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(root, name))
                    found.append([os.path.join(root, name), st.st_size, st.st_mtime_ns])
    return found[:10000]


def finished(workdir: str, config) -> bool:
    """WORKDIR holds a finished run of this config and these inputs, every file as written:
    rerunning it would only redo its evaluation (every process decides alike)."""
    if "://" in workdir:
        return False
    check = storage.verify_manifest(workdir)
    if not check.intact or check.extra.get("fingerprint") != json.loads(json.dumps(fingerprint(config, workdir))):
        return False
    log.info("the run in %s is finished with this config and these inputs, and its files are as written "
             "(%s): nothing to redo", workdir, storage.MANIFEST)
    if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, RESULTS_FILE)):
        print(f"evaluation results: {os.path.join(workdir, RESULTS_FILE)}", flush=True)
    return True


def finish(workdir: str, config) -> None:
    """The run's manifest, last (process 0; the checkpoints are complete by now)."""
    if "://" not in workdir and jax.process_index() == 0:
        storage.write_manifest(workdir, extra={"fingerprint": fingerprint(config, workdir)})


def damage_notes(workdir: str, lm_dir: str) -> List[str]:
    """`--check`: the damaged files of a workdir's finished stages (the run, WORKDIR/data, the
    LM stage and its training run) and what a run does about each; nothing is touched."""
    lm_train = os.path.join(lm_dir, "train")
    stages = ((workdir, ""), (os.path.join(workdir, "data"), "the run generates the task again from its seed"),
              (lm_dir, f"the run rebuilds it from the LM's checkpoints in {lm_train}"),
              (lm_train, f"not read while {lm_dir} is intact"))
    notes = []
    for directory, action in stages:
        for damage in storage.verify_manifest(directory).damaged:
            what = action or _action(_part(workdir, damage.path), workdir)
            notes.append(f"{damage}; {what}")
    return notes
