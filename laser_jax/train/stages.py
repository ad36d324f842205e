"""The two-stage default: causal-LM pretraining, then LaSER from the pretrained LM (issue 15).

`run(config, workdir)` is what `python -m laser_jax.train` runs. When the config asks for a
pretraining stage (`pretrain.num_steps` > 0, `data.synthetic`, `train.objective=laser`, no
`model.init_from`; see config.py's pretrain section):

1. the task is generated when missing (WORKDIR/data, as for any synthetic run);
2. the LM is trained into `pretrain.dir` (default WORKDIR/lm) through the ordinary entry
   (`main.train_main` on the stage config: objective causal_lm, the pretrain section's
   optimizer settings, full training from random init), with its checkpoints in
   LM_DIR/train, so an interrupted stage resumes; a finished LM whose stage fingerprint
   (the resolved stage config without its paths, plus the task's content hash) is
   unchanged and whose files verify against LM_DIR/manifest.json is reused, a damaged one
   rebuilt from LM_DIR/train (train/lm_stage_files.py), a stale one replaced; a
   `pretrain.dir` outside WORKDIR is locked while the stage runs (laser_jax.workdir_lock);
3. it is written as a Hugging Face directory into LM_DIR (float32 for a float32 model, the
   task tokenizer, eos/pad ids in config.json) and its greedy end-state accuracy (the
   end number, or end entity of the hops task) on the task's eval/ queries goes to
   LM_DIR/lm_eval.json and the log;
4. LaSER is trained with `model.init_from=LM_DIR` (architecture fields that restate the
   LM's values are accepted) and evaluated as before.

Any other config runs as one stage (`main.train_main`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Optional

import jax
import ml_collections

from laser_jax.data.errors import ConfigError
from laser_jax.data.formatting import TextFormat
from laser_jax import distributed, workdir_lock
from laser_jax.data import synthetic
from laser_jax.data.synthetic import ensure_generated, read_meta
from laser_jax.inference import reasoning
from laser_jax.inference.load import load_for_inference, load_tokenizer, write_laser_meta
from laser_jax.model.hf_io import save_pretrained
from laser_jax.storage import DamagedFileError
from laser_jax.train import faults, lm_stage_files
from laser_jax.train.config import validate

log = logging.getLogger("laser_jax")

STAGE_FILE, EVAL_FILE, TRAIN_SUBDIR = lm_stage_files.STAGE_FILE, lm_stage_files.EVAL_FILE, lm_stage_files.TRAIN_SUBDIR
# What of the stage config decides the LM (the fingerprint): paths are replaced by the
# task's content hash; logging, checkpoint cadence, devices and the LaSER-only fields are left out.
_FINGERPRINT_DATA = ("query_template", "chat_template", "lm_format", "lm_max_len", "explicit_max_len",
                     "lm_num_widths", "lm_sort_batches", "lm_pack_len", "pad_multiple", "shuffle")
_NOT_FINGERPRINTED_TRAIN = ("log_every", "peak_tflops")


def wants_pretraining(config) -> bool:
    p = config.get("pretrain")
    return bool(p is not None and p.num_steps > 0 and config.data.synthetic and not config.model.init_from
                and config.train.get("objective", "laser") == "laser")


def lm_dir(config, workdir: str) -> str:
    d = config.pretrain.dir
    return os.path.abspath(d) if d else os.path.join(workdir, "lm")


def stage_config(config, task: dict) -> ml_collections.ConfigDict:
    """The pretraining stage's run config: this config's model, data formatting and devices;
    the pretrain section's optimizer; objective causal_lm on the generated task's train.jsonl
    (queries + reasoning) and corpus.jsonl (passages)."""
    s = config.copy_and_resolve_references()
    p = config.pretrain
    t = s.train
    t.objective = "causal_lm"
    t.num_steps, t.batch_size, t.learning_rate = p.num_steps, p.batch_size, p.learning_rate
    t.warmup_steps, t.warmup_ratio, t.schedule, t.min_lr_ratio = p.warmup_steps, 0.0, p.schedule, p.min_lr_ratio
    t.weight_decay, t.adam_b2, t.max_grad_norm, t.seed = p.weight_decay, p.adam_b2, p.max_grad_norm, p.seed
    t.grad_accum_steps, t.cache_chunk_size, t.log_every = 1, 0, p.log_every
    s.lora.rank = 0
    s.model.init_from = ""
    s.model.tokenizer = task["tokenizer"]
    d = s.data
    d.synthetic, d.train_files, d.eval_dir, d.lm_corpus, d.lm_format = False, task["train"], "", task["lm_corpus"], "reasonemb"
    d.shuffle = True
    s.laser.teacher_from = ""
    s.laser.soft_token = "expected_embedding"  # an LM has no latent view (no pause vector to carry)
    s.checkpoint.every_steps = p.checkpoint_every
    s.pretrain.num_steps = 0  # the stage itself is one stage
    return s


def fingerprint(stage: ml_collections.ConfigDict, task_dir: str) -> dict:
    """What decides whether a finished LM can be reused: the stage's model (without its
    paths), LM data and optimizer settings, and the task's content hash and seed."""
    c = json.loads(stage.to_json())
    model = {k: v for k, v in c["model"].items() if k not in ("tokenizer", "init_from")}
    data = {k: c["data"][k] for k in _FINGERPRINT_DATA}
    train = {k: v for k, v in c["train"].items() if k not in _NOT_FINGERPRINTED_TRAIN}
    meta = read_meta(task_dir) or {}
    return {"model": model, "lora": c["lora"], "data": data, "train": train,
            "task_sha256": meta.get("content_sha256"), "task_seed": meta.get("seed")}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _decide(out: str, want: dict) -> str:
    """"reuse", "resume", "stale" or "fresh" (lm_stage_files.decide). Reads only."""
    return lm_stage_files.decide(out, want).state


def _prepare_dir(out: str, want: dict) -> str:
    """_decide, then a stale LM is removed (and "fresh" returned)."""
    return lm_stage_files.prepare(out, lm_stage_files.decide(out, want))


def _sync(name: str) -> None:
    """Every process meets here (several processes run the stages together; process 0
    alone writes the stage's files)."""
    if jax.process_count() > 1:

        distributed.wait_for_all_processes(f"laser_jax/stages/{name}")


def export_lm(train_dir: str, out: str, tokenizer_dir: str, param_dtype: str) -> None:
    """The stage's final checkpoint as a Hugging Face directory (weights in the model's
    parameter dtype, the task tokenizer, eos/pad ids in config.json, and laser.json with the
    text format it was trained with, so loading it never takes a foreign model's format)."""

    loaded = load_for_inference(train_dir, "float32")
    variables = jax.device_get(loaded.variables)
    save_pretrained(out, variables["params"], loaded.cfg, load_tokenizer(tokenizer_dir), lora=variables.get("lora"),
                    dtype=param_dtype)
    write_laser_meta(out, loaded.text_format, loaded.num_thinking_steps)


def evaluate_lm(config, out: str, eval_dir: str) -> dict:
    """Greedy end-state accuracy (end number / end entity) of the LM in `out` on `eval_dir`,
    into out/lm_eval.json."""
    started = time.time()
    loaded = load_for_inference(out, "float32")
    fmt = TextFormat(query_template=config.data.query_template, chat_template=config.data.chat_template)
    result = reasoning.end_state_accuracy(loaded, eval_dir, fmt)
    result["split_dir"] = eval_dir
    result["seconds"] = round(time.time() - started, 1)
    _write_json(os.path.join(out, EVAL_FILE), result)
    return result


def pretrain(config, workdir: str, train_main, task: Optional[dict] = None) -> tuple:
    """Stage 1 (module doc) on `task` (a generated task's paths; default: WORKDIR/data,
    generated when missing). Returns (exit code, LM directory)."""
    task = task or ensure_generated(os.path.join(workdir, "data"), **synthetic.config_args(config.data))
    stage = stage_config(config, task)
    out = lm_dir(config, workdir)
    want = fingerprint(stage, os.path.dirname(task["train"]))
    writer = jax.process_index() == 0
    # issue 24: an LM directory outside the workdir is another directory this run writes
    with workdir_lock.held(out, "pretrain.dir") if not _inside(out, workdir) else contextlib.nullcontext():
        decision = lm_stage_files.decide(out, want)  # every process reads before any writes
        _sync("decided")
        code = _build_lm(stage, task, out, want, decision, train_main) if decision.state != "reuse" else 0
        if code != 0:
            return code, out
        if decision.state == "reuse":
            log.info("stage 1/2: reusing the pretrained LM in %s (same stage config and task)", out)
        evaluate = writer and config.pretrain.eval and not os.path.exists(os.path.join(out, EVAL_FILE))
        if evaluate:
            result = evaluate_lm(config, out, task["eval"])
            log.info("stage 1/2: LM %s on %s (%.0f s)", reasoning.format_result(result), task["eval"],
                     result["seconds"])
            print(f"pretrained LM: {reasoning.format_result(result)}", flush=True)
        if writer and (decision.state != "reuse" or evaluate):
            lm_stage_files.finish(out, want)  # issue 27: the stage's manifest, last
        _sync("exported")
    return 0, out


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(directory)]) == os.path.abspath(directory)


def _build_lm(stage, task: dict, out: str, want: dict, decision, train_main) -> int:
    """Train the LM (or resume its training) and export it into `out` (the stage's
    manifest is removed first and written after, by `pretrain`)."""
    writer = jax.process_index() == 0
    log.info("stage 1/2: %s causal-LM pretraining into %s (%d steps)",
             "resuming" if decision.state == "resume" else "starting", out, stage.train.num_steps)
    if writer:
        lm_stage_files.prepare(out, decision)
        os.makedirs(out, exist_ok=True)
        _write_json(os.path.join(out, STAGE_FILE), {"fingerprint": want, "done": False})
    _sync("prepared")
    started = time.time()
    if decision.state == "resume" and lm_stage_files.training_finished(out):
        log.info("stage 1/2: the LM's training in %s is finished and intact: exporting it again",
                 os.path.join(out, TRAIN_SUBDIR))
    else:
        code = train_main(stage, os.path.join(out, TRAIN_SUBDIR))
        if code != 0:
            return code
    if writer:
        export_lm(os.path.join(out, TRAIN_SUBDIR), out, task["tokenizer"], stage.model.param_dtype)
        _write_json(os.path.join(out, STAGE_FILE), {"fingerprint": want, "done": True})
        log.info("stage 1/2: wrote the LM to %s (%.0f s)", out, time.time() - started)
        if not lm_stage_files.evaluation_still_valid(out, decision.recorded):
            _remove(os.path.join(out, EVAL_FILE))  # evaluated again below
    return 0


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def finetune_config(config, out: str) -> ml_collections.ConfigDict:
    """Stage 2: this config, starting from the LM (its own tokenizer is the task's)."""
    c = config.copy_and_resolve_references()
    c.model.init_from = out
    return c


def run(config, workdir: str, train_main) -> int:
    """One or two stages (module doc); returns the exit code of the last stage run."""
    if not wants_pretraining(config):
        return train_main(config, workdir)

    try:
        validate(config)  # a bad fine-tuning config fails before the LM is trained
        code, out = pretrain(config, workdir, train_main)
    except (ConfigError, FileNotFoundError, DamagedFileError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return faults.EXIT_BAD_INPUT
    if code != 0:
        return code
    log.info("stage 2/2: LaSER from the pretrained LM %s", out)
    return train_main(finetune_config(config, out), workdir)
