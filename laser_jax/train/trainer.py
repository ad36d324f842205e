"""The training run: set-up from a config, the step loop, metrics, checkpoints, signals.

`Trainer(config, workdir).run()` trains until `train.num_steps` (0 = one epoch), resuming
from WORKDIR/checkpoints when there is a checkpoint there. The loop dispatches step N
before reading step N-1's metrics, so the device never waits on the host.

Faults (docs/faults.md): SIGTERM/SIGINT end the run after the current step with a
checkpoint; a non-finite step stops the run (or is skipped) without touching the last good
checkpoint; a pending asynchronous save is always completed before an error propagates.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from laser_jax.train import checkpoint as ckpt_lib
from laser_jax.train import faults
from laser_jax.train import setup as setup_run
from laser_jax.train import sharding
from laser_jax.data.errors import ConfigError
from laser_jax.data.pipeline import steps_per_epoch, train_iterator
from laser_jax.data.sources import open_records
from laser_jax.data.tokenize import repad_left
from laser_jax.train.flops import device_peak_tflops, step_tokens, train_flops
from laser_jax.train.metrics import MetricsWriter
from laser_jax.model.decoder import Decoder
from laser_jax.train.step import BATCH_KEYS, StepConfig, init_state, jit_train_step, learning_rate_schedule, \
    make_optimizer

log = logging.getLogger("laser_jax")
NonFiniteLossError = faults.NonFiniteLossError  # re-exported (raised by Trainer.run)


class Trainer:
    """Everything a run holds: config, mesh, data, model, optimizer, state, checkpointer.

    Args:
      config: the run config (laser_jax.train.config).
      workdir: checkpoints, metrics and the tokenizer go here.
      stop: the stop-signal recorder; pass one installed before construction (as the CLI
        does) so a signal during set-up also counts. Default: installed by `run`.
    """

    def __init__(self, config, workdir: str, stop: Optional[faults.StopSignals] = None):
        self.config, self.workdir = config, workdir
        self.is_writer = jax.process_index() == 0
        self.stop = stop or faults.StopSignals()
        self.skipped_steps: list = []
        self._setup()

    @property
    def _stop_signal(self) -> Optional[int]:
        return self.stop.signum

    @functools.cached_property
    def checkpointer(self) -> ckpt_lib.Checkpointer:
        """Created on first use: a run stopped during set-up starts no Orbax threads."""
        c = self.config.checkpoint
        return ckpt_lib.Checkpointer(self.workdir, c.keep, c.async_save)

    # ------------------------------------------------------------------ set-up
    def _setup(self):
        c = self.config
        if self.is_writer:
            os.makedirs(self.workdir, exist_ok=True)
        paths = setup_run.resolve_data(c, self.workdir)
        self.paths = paths
        setup_run.check_eval_dir(paths)
        self.tokenizer = setup_run.load_tokenizer(paths)
        self.model_cfg = setup_run.model_config(c, self.tokenizer)
        setup_run.check_init_weights(c)
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
        summary = getattr(self.source, "summary", None)
        if self.is_writer and summary is not None:
            (log.warning if summary.num_skipped else log.info)("training data: %s", summary)
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
        self.text_format = setup_run.text_format(c)
        self.meta = ckpt_lib.make_meta(c, self.model_cfg, self.text_format, c.laser.num_thinking_steps, self.eos_id)
        self.teacher, teacher_shardings = self._load_teacher()
        step_cfg = StepConfig(c.laser.num_thinking_steps, self.loss_cfg, self.eos_id, c.train.grad_accum_steps,
                              c.train.cache_chunk_size)
        self.step_fn = jit_train_step(self.model, self.tx, step_cfg, self.state_shardings, self.batch_sharding,
                                      teacher_shardings)
        self.nan_steps = faults.nan_fault_steps()
        if self.nan_steps:  # fault injection (tests): these steps run with NaN temperatures
            log.warning("%s=%s: steps %s will produce a NaN loss (fault injection)", faults.NAN_STEPS_ENV,
                        os.environ[faults.NAN_STEPS_ENV], sorted(self.nan_steps))
            poisoned = dataclasses.replace(step_cfg, loss=faults.poisoned_loss_config(self.loss_cfg))
            self.nan_step_fn = jit_train_step(self.model, self.tx, poisoned, self.state_shardings,
                                              self.batch_sharding, teacher_shardings)
        self.non_embedding_params = self.model_cfg.num_params(include_embeddings=False)
        self.peak = device_peak_tflops(c.train.peak_tflops)

    def _load_teacher(self):
        path = self.config.laser.teacher_from
        if not path:
            return None, None
        from laser_jax.inference.load import load_for_inference

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
        from laser_jax.model import hf_io

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
    def run(self) -> dict:
        """Train; returns the last logged metrics (empty when stopped before the first step)."""
        own_handlers = not self.stop.installed
        self.stop.install()
        try:
            if self.stop.signum is not None and jax.process_count() == 1:  # (several: decided together)
                log.warning("stopped by signal %d during set-up, before the first step; nothing to checkpoint",
                            self.stop.signum)
                return {}
            return self._run()
        finally:
            if own_handlers:
                self.stop.uninstall()

    def _run(self) -> dict:
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
        last, unchecked, step, saved = {}, None, start, start
        interval = _Interval()
        try:
            while step < self.total_steps and not self._stop_requested(step - start):
                host_batch = next(iterator)
                batch = self._global_batch(host_batch)
                args = (state, batch) + ((self.teacher,) if self.teacher is not None else ())
                step_fn = self.nan_step_fn if step + 1 in self.nan_steps else self.step_fn
                if step == start:
                    log.info("compiling and running the first step")
                state, metrics = step_fn(*args)  # dispatched; runs while the host goes on
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
                    saved = step
            if unchecked is not None:
                self._check_finite(*unchecked)
            if step > saved:
                self.checkpointer.save(step, state, iterator, self.meta, force=True)
            self.checkpointer.wait()
        except BaseException:
            self._finish_pending_save()
            raise
        finally:
            writer.close()
        self.state = state
        if self.skipped_steps:
            log.warning("skipped %d non-finite step(s): %s (train.nonfinite=skip)", len(self.skipped_steps),
                        self.skipped_steps)
        if self.stop.signum is not None:
            where = (f"checkpoint step {step} in {self.checkpointer.directory}" if step
                     else "no step was taken, nothing to checkpoint")
            log.warning("stopped by signal %d at step %d (%s); rerun the same command to resume",
                        self.stop.signum, step, where)
        return last

    def _stop_requested(self, steps_done: int) -> bool:
        """Whether to stop now (`steps_done` steps into this run): this process's signal or,
        in a multi-process run, any process's (compared at the first step and then every
        train.log_every steps, so all processes stop at the same one)."""
        agreed = faults.agreed_stop(self.stop.signum, steps_done, self.config.train.log_every,
                                    jax.process_count(), multihost_utils.process_allgather)
        if agreed is not None and self.stop.signum is None:
            self.stop.signum = agreed
            log.warning("another process received signal %d: stopping with it", agreed)
        return agreed is not None

    def _finish_pending_save(self):
        """On an error, let an asynchronous save of an earlier (good) step complete, so the
        newest checkpoint on disk is whole; its own failure is only logged."""
        try:
            self.checkpointer.wait()
        except Exception as e:  # the original error matters more
            log.warning("the pending checkpoint save did not complete: %s", e)

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
        """Stop (train.nonfinite=stop) or warn and go on (skip) after a non-finite step; the
        step itself already left the parameters and optimizer state unchanged."""
        if bool(jax.device_get(metrics["finite"])):
            return
        msg = faults.nonfinite_message(step, jax.device_get(metrics), records,
                                       getattr(self.source, "location", None))
        if self.config.train.nonfinite == "skip":
            self.skipped_steps.append(step)
            log.warning("%s; the update was skipped (train.nonfinite=skip)", msg)
            return
        kept = self.checkpointer.latest_step()
        raise NonFiniteLossError(
            msg + f". The update was not applied and nothing was saved after it; the last good checkpoint "
            f"({'step %d' % kept if kept is not None else 'none yet'}, {self.checkpointer.directory}) is intact. "
            "Set train.nonfinite=skip to skip such steps.")

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
        """Trained variables on the host (for evaluation at the end of a run); gathered from
        every process when parameters are split across hosts."""
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(self.state.variables(), tiled=True)
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
