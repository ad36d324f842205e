"""Evaluate a just-trained model on `data.eval_dir` (BRIGHT format) and print the table."""
from __future__ import annotations

import json
import logging
import os

import jax

from laser_jax.inference.encoder import LaserEncoder
from laser_jax.inference.evaluate import evaluate_dir, format_table, summarize
from laser_jax.method.views import resolve_num_thinking_steps

log = logging.getLogger("laser_jax")
RESULTS_FILE = "eval_results.json"


def encoder_from_trainer(trainer) -> LaserEncoder:
    """A LaserEncoder over the trainer's final variables (no dropout), on one device."""
    cfg = trainer.model_cfg.replace(lora_dropout=0.0)
    variables = jax.device_put(trainer.inference_variables(), jax.local_devices()[0])
    return LaserEncoder(cfg, variables, trainer.tokenizer, trainer.text_format,
                        trainer.config.laser.num_thinking_steps)


def evaluate_trained(trainer) -> dict:
    """Evaluate, print the table, write WORKDIR/eval_results.json; returns the summary."""
    c = trainer.config
    enc = encoder_from_trainer(trainer)
    # eval.num_thinking_steps 0 means "the trained K" (laser.num_thinking_steps).
    steps = resolve_num_thinking_steps(c.eval.num_thinking_steps or None, enc.num_thinking_steps)
    kw = dict(num_thinking_steps=steps, max_length=c.eval.max_length, batch_size=c.eval.batch_size)
    results = evaluate_dir(trainer.paths.eval_dir,
                           lambda texts, instruction: enc.encode_queries(texts, instruction, **kw),
                           lambda texts: enc.encode_documents(texts, **kw))
    summary = summarize(results)
    summary["num_thinking_steps"] = steps
    if trainer.is_writer:
        path = os.path.join(trainer.workdir, RESULTS_FILE)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\nHeld-out evaluation ({trainer.paths.eval_dir}, K={steps}):")
        print(format_table(results))
        print(f"evaluation results: {path}")
    return summary
