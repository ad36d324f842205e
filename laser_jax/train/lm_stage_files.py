"""The pretraining stage's directory (LM_DIR, train/stages.py) against its manifest (issue 27).

LM_DIR holds the stage's output (the Hugging Face export: config.json, model.safetensors,
the tokenizer; stage.json; lm_eval.json) and, in LM_DIR/train, the LM's own training run
(checkpoints, metrics), which has a manifest of its own (train/run_files.py). The stage
ends by writing LM_DIR/manifest.json (every output file hashed: the LaSER stage reads them;
the stage fingerprint beside them), last. A rerun reuses the LM only when that manifest
verifies and its fingerprint is this config's; a damaged output is named in one warning per
file and rebuilt from LM_DIR/train's checkpoints (the export redone; the LM's evaluation
too unless the redone export equals what the manifest recorded); nothing damaged is used.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Optional

import jax

from laser_jax import storage
from laser_jax.data.errors import ConfigError
from laser_jax.workdir_lock import LOCK_NAME

log = logging.getLogger("laser_jax")

STAGE_FILE = "stage.json"
EVAL_FILE = "lm_eval.json"
TRAIN_SUBDIR = "train"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with LM_DIR: "reuse", "resume" (rebuild from LM_DIR/train), "stale" (an LM
    of another fingerprint: replaced) or "fresh" (nothing there); `recorded` is the files
    the last finished stage listed (for `evaluation_still_valid`)."""

    state: str
    recorded: Optional[dict] = None


def _read_stage(out: str) -> Optional[dict]:
    try:
        stage = storage.read_json(os.path.join(out, STAGE_FILE))
    except (OSError, ValueError):
        return None
    return stage if isinstance(stage, dict) else None


def _recorded_files(out: str) -> Optional[dict]:
    try:
        return storage.read_json(os.path.join(out, storage.MANIFEST))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decide(out: str, want: dict) -> Decision:
    """Reads only (every process calls it); warns once per damaged file (process 0 only)."""
    if not os.path.isdir(out) or not [n for n in os.listdir(out) if n != LOCK_NAME]:
        return Decision("fresh")
    check = storage.verify_manifest(out)
    stage = _read_stage(out)
    recorded_fp = check.extra.get("fingerprint")
    if check.intact and recorded_fp == want:
        if _is_writer():  # the LM's training run is not read while its export is intact: said, not rebuilt
            for damage in storage.verify_manifest(os.path.join(out, TRAIN_SUBDIR)).damaged:
                log.warning("%s; not needed while the LM in %s is intact (a rebuild of the LM would resume from "
                            "its newest intact checkpoint)", damage, out)
        return Decision("reuse")
    if stage is None and not check.present and not os.path.isdir(os.path.join(out, TRAIN_SUBDIR)):
        raise ConfigError(f"pretrain.dir: {out} exists, is not empty and holds no {STAGE_FILE}: not a pretraining "
                          "stage's directory; choose another one (or empty it)")
    fingerprint = recorded_fp or (stage or {}).get("fingerprint")
    if fingerprint is not None and fingerprint != want:
        return Decision("stale")
    if fingerprint is None:
        log.warning("%s: neither %s nor %s says which LM this is: training a new one", out, STAGE_FILE,
                    storage.MANIFEST)
        return Decision("stale")
    if _is_writer():
        for damage in check.damaged:
            log.warning("%s; the LM stage rebuilds it from its checkpoints in %s", damage,
                        os.path.join(out, TRAIN_SUBDIR))
    return Decision("resume", _recorded_files(out))


def _is_writer() -> bool:
    return jax.process_index() == 0


def prepare(out: str, decision: Decision) -> str:
    """Before the stage writes (process 0): a stale LM is removed ("fresh" returned); the
    manifest goes first, so an interrupted rebuild is never taken for a finished stage."""
    state = decision.state
    if state == "stale":
        log.warning("the LM in %s was trained with another stage config or task: training a new one", out)
        for name in [n for n in os.listdir(out) if n != LOCK_NAME]:  # the lock is this run's
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        state = "fresh"
    storage.remove_manifest(out)
    return state


def training_finished(out: str) -> bool:
    """LM_DIR/train is a finished run whose files verify (its export can be redone without
    running it again)."""
    return storage.verify_manifest(os.path.join(out, TRAIN_SUBDIR)).intact


def evaluation_still_valid(out: str, recorded: Optional[dict]) -> bool:
    """After a rebuild: every file the finished stage recorded (weights, config, tokenizer,
    lm_eval.json) is back exactly as recorded, so its evaluation holds for this LM."""
    if not recorded or EVAL_FILE not in recorded:
        return False
    names = [n for n in recorded if n != STAGE_FILE]
    return all(storage.verify_manifest_entry(os.path.join(out, n), recorded[n]) == "" for n in names)


def finish(out: str, want: dict) -> None:
    """The stage's manifest, last (process 0): every output hashed, the fingerprint beside."""
    storage.write_manifest(out, extra={"fingerprint": want}, hash_all=True, skip=(TRAIN_SUBDIR,))
