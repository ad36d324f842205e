"""The training run: set-up from a config, the step loop, metrics, checkpoints, signals.

`Trainer(config, workdir).run()` trains until `train.num_steps` (0 = one epoch), resuming
from WORKDIR/checkpoints when there is a checkpoint there. The loop dispatches step N
before reading step N-1's metrics, so the device never waits on the host.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from laser_jax import checkpoint as ckpt_lib
from laser_jax import setup_run, sharding
from laser_jax.data.errors import ConfigError
from laser_jax.data.pipeline import steps_per_epoch, train_iterator
from laser_jax.data.records import open_records
from laser_jax.data.tokenize import repad_left
from laser_jax.flops import device_peak_tflops, step_tokens, train_flops
from laser_jax.metrics_writer import MetricsWriter
from laser_jax.model.decoder import Decoder
from laser_jax.train_step import BATCH_KEYS, StepConfig, init_state, jit_train_step, learning_rate_schedule, \
    make_optimizer

log = logging.getLogger("laser_jax")


class NonFiniteLossError(RuntimeError):
    """A step produced a non-finite loss or gradient (train.nonfinite=stop)."""


class Trainer:
    """Everything a run holds: config, mesh, data, model, optimizer, state, checkpointer."""

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        self.is_writer = jax.process_index() == 0
        self._stop_signal: Optional[int] = None
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self):
        c = self.config
        from transformers import AutoTokenizer

        if self.is_writer:
            os.makedirs(self.workdir, exist_ok=True)
        paths = setup_run.resolve_data(c, self.workdir)
        self.paths = paths
        self.tokenizer = AutoTokenizer.from_pretrained(paths.tokenizer)
        self.model_cfg = setup_run.model_config(c, self.tokenizer)
        self.model = Decoder(self.model_cfg)
        devices = jax.devices()
        if c.mesh.num_devices:
            if c.mesh.num_devices > len(devices):
                raise ConfigError(f"mesh.num_devices: {c.mesh.num_devices} requested, {len(devices)} available")
            devices = devices[:c.mesh.num_devices]
        self.mesh = sharding.make_mesh(c.mesh.shape, devices)
        dp = sharding.data_parallel_size(self.mesh)
        micro = c.train.batch_size // c.train.grad_accum_steps
        if micro % dp:
            raise ConfigError(f"train.batch_size: {c.train.batch_size} queries in {c.train.grad_accum_steps} "
                              f"micro-batch(es) of {micro} do not split over the {dp} data-parallel devices "
                              f"of mesh {dict(self.mesh.shape)}")
        self.loss_cfg = setup_run.loss_config(c)
        self.eos_id = self.tokenizer.eos_token_id
        self.source = open_records(paths.train_files, group_size=c.data.group_size,
                                   skip_bad_records=c.data.skip_bad_records)
        if self.is_writer and getattr(self.source, "summary", None) is not None:
            log.info("training data: %s", self.source.summary)
        self.options = setup_run.pipeline_options(c, jax.process_index(), jax.process_count())
        self.steps_per_epoch = steps_per_epoch(len(self.source), self.options)
        self.total_steps = c.train.num_steps or self.steps_per_epoch
        self.tx = make_optimizer(c.train, self.total_steps)
        self.schedule = learning_rate_schedule(c.train.learning_rate, self.total_steps, c.train.warmup_ratio)
        boxed = jax.eval_shape(lambda: init_state(self.model_cfg, self.tx, jax.random.key(0), boxed=True))
        self.state_shardings = sharding.logical_shardings(self.mesh, boxed)
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), self.state_shardings)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.checkpointer = ckpt_lib.Checkpointer(self.workdir, c.checkpoint.keep, c.checkpoint.async_save)
        self.text_format = setup_run.text_format(c)
        self.meta = ckpt_lib.make_meta(c, self.model_cfg, self.text_format, c.laser.num_thinking_steps, self.eos_id)
        self.teacher, teacher_shardings = self._load_teacher()
        step_cfg = StepConfig(c.laser.num_thinking_steps, self.loss_cfg, self.eos_id, c.train.grad_accum_steps,
                              c.train.cache_chunk_size)
        self.step_fn = jit_train_step(self.model, self.tx, step_cfg, self.state_shardings, self.batch_sharding,
                                      teacher_shardings)
        self.non_embedding_params = self.model_cfg.num_params(include_embeddings=False)
        self.peak = device_peak_tflops(c.train.peak_tflops)

    def _load_teacher(self):
        path = self.config.laser.teacher_from
        if not path:
            return None, None
        from laser_jax.model_io import load_for_inference

        loaded = load_for_inference(path, self.model_cfg.compute_dtype)
        if (loaded.cfg.hidden_size, loaded.cfg.vocab_size) != (self.model_cfg.hidden_size, self.model_cfg.vocab_size):
            raise ConfigError(f"laser.teacher_from: {path} has hidden/vocab "
                              f"{loaded.cfg.hidden_size}/{loaded.cfg.vocab_size}, the student "
                              f"{self.model_cfg.hidden_size}/{self.model_cfg.vocab_size}")
        if loaded.cfg.lora_rank != self.model_cfg.lora_rank or loaded.cfg.lora_targets != self.model_cfg.lora_targets:
            from laser_jax.model import lora as lora_lib

            variables = {"params": lora_lib.merge(loaded.variables["params"], loaded.variables["lora"], loaded.cfg)
                         if "lora" in loaded.variables else loaded.variables["params"]}
            if self.model_cfg.lora_rank:  # zero adapters keep the student's module structure
                from laser_jax.model.decoder import init_variables

                variables["lora"] = jax.tree_util.tree_map(
                    jnp.zeros_like, init_variables(self.model_cfg, jax.random.key(0))["lora"])
        else:
            variables = loaded.variables
        replicated = sharding.replicated(self.mesh)
        shardings = jax.tree_util.tree_map(lambda _: replicated, variables)
        return jax.device_put(variables, shardings), shardings

    def _fresh_state(self):
        c = self.config
        rng = jax.random.key(c.train.seed)
        if not c.model.init_from:
            init = jax.jit(lambda r: init_state(self.model_cfg, self.tx, r), out_shardings=self.state_shardings)
            return init(rng)
        from laser_jax import hf_io

        params_shardings = (self.state_shardings.frozen if self.model_cfg.lora_rank
                            else self.state_shardings.trainable)["params"]
        params = hf_io.load_params(c.model.init_from, self.model_cfg, params_shardings)
        init = jax.jit(lambda r, p: init_state(self.model_cfg, self.tx, r, base_params=p),
                       out_shardings=self.state_shardings)
        return init(rng, params)

    def _save_tokenizer(self):
        target = os.path.join(self.workdir, ckpt_lib.TOKENIZER)
        if self.is_writer and not os.path.exists(os.path.join(target, "tokenizer_config.json")):
            self.tokenizer.save_pretrained(target)
        if self.is_writer:
            with open(os.path.join(self.workdir, "run_config.json"), "w") as f:
                f.write(self.config.to_json(indent=2))

    # ------------------------------------------------------------------ data
    def _global_batch(self, host_batch: dict):
        """Host-local numpy batch -> global jax arrays sharded over (data, fsdp)."""
        if jax.process_count() > 1:  # every host must feed the same shapes
            from jax.experimental import multihost_utils

            local = np.array([host_batch[f"{v}_ids"].shape[1] for v in ("q", "d", "e")])
            widest = np.max(multihost_utils.process_allgather(local), axis=0)
            host_batch = repad_left(host_batch, dict(zip(("q", "d", "e"), widest.tolist())))
        out = {}
        for key in BATCH_KEYS:
            local = host_batch[key]
            global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
            out[key] = jax.make_array_from_process_local_data(self.batch_sharding, local, global_shape)
        return out

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
        self._stop_signal = signum

    def run(self) -> dict:
        """Train; returns the last logged metrics."""
        c = self.config
        self._save_tokenizer()
        iterator = train_iterator(self.source, self.tokenizer, self.options)
        restored = self.checkpointer.restore(self.abstract_state, iterator)
        if restored is None:
            state, start = self._fresh_state(), 0
            log.info("starting from scratch: %s", self._describe())
        else:
            state, start = restored
            log.info("resumed from step %d in %s", start, self.checkpointer.directory)
        writer = MetricsWriter(self.workdir, start_step=start, enabled=self.is_writer)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        last, unchecked, step = {}, None, start
        interval = _Interval()
        try:
            while step < self.total_steps and self._stop_signal is None:
                host_batch = next(iterator)
                batch = self._global_batch(host_batch)
                args = (state, batch) + ((self.teacher,) if self.teacher is not None else ())
                state, metrics = self.step_fn(*args)  # dispatched; runs while the host goes on
                step += 1
                interval.add(self._tokens(host_batch), self._flops(batch))
                if unchecked is not None:  # the previous step: done by now
                    self._check_finite(*unchecked)
                unchecked = (step, metrics, host_batch["record"])
                if step % c.train.log_every == 0 or step == self.total_steps or step == start + 1:
                    self._check_finite(*unchecked)
                    unchecked = None
                    last = self._log(step, jax.device_get(metrics), interval.take(), writer)
                if step % c.checkpoint.every_steps == 0 and step < self.total_steps:
                    if unchecked is not None:
                        self._check_finite(*unchecked)
                        unchecked = None
                    self.checkpointer.save(step, state, iterator, self.meta)
            if unchecked is not None:
                self._check_finite(*unchecked)
            self.checkpointer.save(step, state, iterator, self.meta, force=True)
            self.checkpointer.wait()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            writer.close()
        self.state = state
        if self._stop_signal is not None:
            log.warning("stopped by signal %d at step %d; checkpoint saved, rerun the same command to resume",
                        self._stop_signal, step)
        return last

    def _tokens(self, host_batch) -> float:
        """Real (non-padding) tokens of the global batch (this host's share x hosts)."""
        real = sum(int(host_batch[k].sum()) for k in ("q_mask", "d_mask", "e_mask")
                   if k != "e_mask" or self.loss_cfg.needs_explicit)
        return float(real * jax.process_count())

    def _flops(self, batch) -> float:
        shapes = {k: v.shape for k, v in batch.items()}
        tokens = step_tokens(shapes, self.config.laser.num_thinking_steps, self.loss_cfg.needs_explicit)
        return train_flops(self.non_embedding_params, tokens)

    def _check_finite(self, step: int, metrics: dict, records: np.ndarray):
        if bool(jax.device_get(metrics["finite"])):
            return
        terms = {k: float(v) for k, v in jax.device_get(metrics).items() if k.startswith("loss")}
        where = [self.source.location(int(i)) if hasattr(self.source, "location") else str(int(i))
                 for i in records[:16]]
        msg = (f"non-finite loss or gradient at step {step}: "
               f"{', '.join(f'{k}={v:.4g}' for k, v in terms.items())}, "
               f"l2_grads={float(jax.device_get(metrics['l2_grads'])):.4g}; batch records "
               f"{[int(i) for i in records[:16]]} ({'; '.join(where)})")
        if self.config.train.nonfinite == "skip":
            log.warning("%s; the update was skipped (train.nonfinite=skip)", msg)
            return
        raise NonFiniteLossError(msg + ". The update was not applied and no checkpoint was written; the last "
                                 "good checkpoint is intact (set train.nonfinite=skip to skip such steps)")

    def _log(self, step: int, metrics: dict, interval: "_IntervalStats", writer) -> dict:
        m = {k: float(v) for k, v in metrics.items() if k not in ("finite", "tokens")}
        seconds = max(interval.seconds, 1e-9)
        row = {"step": step, **m, "learning_rate": float(self.schedule(step - 1)),
               "step_time_s": seconds / max(interval.steps, 1),
               "tokens_per_s": interval.tokens / seconds,
               "tflops_per_s": interval.flops / seconds / 1e12 / jax.device_count()}
        if self.peak:
            row["mfu"] = row["tflops_per_s"] / self.peak
        writer.write(row)
        log.info("step %d/%d | loss %.4f (cl_lat %.3f cl_exp %.3f kl_out %.4f kl_mid %.4f) | acc %.2f/%.2f | "
                 "lr %.2e | %.3fs/step | %.0f tok/s | %.3f TFLOP/s/device%s", step, self.total_steps, m["loss"],
                 m["loss_cl_latent"], m["loss_cl_explicit"], m["loss_kl_out"], m["loss_kl_mid"], m["acc_latent"],
                 m["acc_explicit"], row["learning_rate"], row["step_time_s"], row["tokens_per_s"],
                 row["tflops_per_s"],
                 f" | MFU {100 * row['mfu']:.1f}%" if self.peak else "")
        return row

    def _describe(self) -> str:
        c = self.config
        return (f"{self.model_cfg.family} {self.model_cfg.num_params() / 1e6:.1f}M params "
                f"({'LoRA r=%d' % c.lora.rank if c.lora.rank else 'full fine-tuning'}), mesh {dict(self.mesh.shape)}, "
                f"{len(self.source)} records, {self.total_steps} steps of {c.train.batch_size} queries x "
                f"{c.data.group_size} docs, K={c.laser.num_thinking_steps}")

    def inference_variables(self):
        """Trained variables on the host (for evaluation at the end of a run)."""
        return jax.device_get(self.state.variables())


class _IntervalStats:
    def __init__(self, steps, tokens, flops, seconds):
        self.steps, self.tokens, self.flops, self.seconds = steps, tokens, flops, seconds


class _Interval:
    """Steps, tokens and FLOPs since the last log line, and the wall time they took."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self.t0, self.steps, self.tokens, self.flops = time.perf_counter(), 0, 0.0, 0.0

    def add(self, tokens: float, flops: float):
        self.steps, self.tokens, self.flops = self.steps + 1, self.tokens + tokens, self.flops + flops

    def take(self) -> _IntervalStats:
        stats = _IntervalStats(self.steps, self.tokens, self.flops, time.perf_counter() - self.t0)
        self._reset()
        return stats
