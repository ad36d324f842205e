"""The ablation's one pretrained LM: which LM its variants start from, and the job that makes it.

`ablate` (see its module doc) pretrains the config's LM once into RUNS/lm, as one job that
every training job waits for (laser_jax.experiments.pretrain_lm, which also holds a lock on
RUNS/lm.lock while it writes), or takes an existing LM (--lm); every trained variant then
starts from it (`model.init_from`) and rewrite_then_retrieve writes its reasoning with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import List, Optional, Tuple

from laser_jax.experiments.jobs import Job
from laser_jax.experiments.rewrite import lm_fingerprint
from laser_jax.train import stages

LM_JOB = "lm"


@dataclasses.dataclass(frozen=True)
class StartLM:
    """The pretrained LM every trained variant starts from (`model.init_from`)."""

    path: str
    tag: str       # its identity in the jobs' configs: another LM reruns them
    job: str = ""  # the job that pretrains it ("" = it exists already: --lm)


def config_flag_args(overrides: dict) -> List[str]:
    """`--config.FIELD=VALUE` flags of dotted overrides (booleans as true / false)."""
    def text(value) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return [f"--config.{k}={text(v)}" for k, v in overrides.items()]


def pretrains(cfg) -> bool:
    """Whether the config has a pretraining stage (pretrain.num_steps > 0)."""
    return cfg is not None and cfg.get("pretrain") is not None and cfg.pretrain.num_steps > 0


def pretrained_lm_dir(f, runs_dir: str, cfg=None) -> str:
    """The LM every trained variant starts from and rewrite_then_retrieve's writer: --lm
    (absolute); else RUNS/lm when the config has a pretraining stage (the ablation's first
    job pretrains it); else "" (random init, no rewrite_then_retrieve)."""
    if f.lm:
        return os.path.abspath(f.lm)
    return os.path.join(runs_dir, "lm") if pretrains(cfg) else ""


def lm_job(config: str, runs_dir: str, data: dict, base: dict, cfg) -> Tuple[Job, StartLM]:
    """The one job pretraining the LM into RUNS/lm, and the LM it leaves. Its identity is the
    stage fingerprint (train/stages.py): known before the LM exists, and what decides whether
    the stage reuses a finished LM."""
    out, task_dir = os.path.join(runs_dir, "lm"), os.path.dirname(data["train"])
    fingerprint = stages.fingerprint(stages.stage_config(cfg, data), task_dir)
    argv = [sys.executable, "-m", "laser_jax.experiments.pretrain_lm", f"--config={config}",
            f"--task_dir={task_dir}", f"--out={out}", *config_flag_args(base)]
    job = Job(LM_JOB, LM_JOB, cfg.pretrain.seed, runs_dir, argv, os.path.join(out, "config.json"),
              config={"stage": fingerprint}, owns_workdir=False, stem=LM_JOB, alone=True)
    tag = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return job, StartLM(out, tag, job.name)


def start_lm(lm: str, given: bool, config: str, runs_dir: str, data: dict, base: dict,
             cfg) -> Tuple[Optional[StartLM], List[Job]]:
    """(the LM the training jobs start from, [the job pretraining it]): a given LM (--lm) as
    it is, RUNS/lm after its job, or (None, []) without an LM (`lm` empty)."""
    if not lm:
        return None, []
    if given:
        return StartLM(lm, lm_fingerprint(lm)), []
    job, start = lm_job(config, runs_dir, data, base, cfg)
    return start, [job]
