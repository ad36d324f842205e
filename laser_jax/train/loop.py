"""The training loop over a set-up run (train/trainer.py): steps, metrics, checkpoints, signals.

`train(run)` trains until `train.num_steps` (0 = one epoch), resuming from
WORKDIR/checkpoints when there is a checkpoint there. The loop dispatches step N before
reading step N-1's metrics, so the device never waits on the host.

Faults (docs/faults.md): SIGTERM/SIGINT end the run after the current step with a
checkpoint; a non-finite step stops the run (or is skipped) without touching the last good
checkpoint; a pending asynchronous save is always completed before an error propagates.
"""
from __future__ import annotations

import logging
import os
import time
from typing import List, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from laser_jax import distributed
from laser_jax.data.pipeline import train_iterator
from laser_jax.data.tokenize import repad_left
from laser_jax.model import gguf_io, hf_io
from laser_jax.train import checkpoint as ckpt_lib
from laser_jax.train import faults, lm, run_files
from laser_jax.train.flops import StepFlops, peak_rates, throughput, train_step_flops
from laser_jax.train.metrics import MetricsWriter
from laser_jax.train.plot import plot_metrics
from laser_jax.train.step import BATCH_KEYS, init_state
from laser_jax.train.trainer import Run, Trained

log = logging.getLogger("laser_jax")


def train(run: Run, stop: Optional[faults.StopSignals] = None, until: Optional[int] = None) -> Trained:
    """Train `run`; returns it with its final state and last logged metrics.

    Args:
      run: from `trainer.set_up`.
      stop: the stop-signal recorder; pass one installed before set-up (as the CLI does) so
        a signal during set-up also counts. Default: installed here for the loop.
      until: stop after this step (an interrupted run's end); default the run's last step.
    """
    stop = stop or faults.StopSignals()
    own_handlers = not stop.installed
    stop.install()
    try:
        if stop.signum is not None and jax.process_count() == 1:  # (several: decided together)
            log.warning("stopped by signal %d during set-up, before the first step; nothing to checkpoint",
                        stop.signum)
            return Trained.of(run, signum=stop.signum)
        return _loop(run, stop, min(until or run.total_steps, run.total_steps))
    finally:
        if own_handlers:
            stop.uninstall()


def _loop(run: Run, stop: faults.StopSignals, last_step: int) -> Trained:
    c, program = run.config, run.program
    iterator = (lm.iterator if lm.is_lm(c) else train_iterator)(run.source, run.tokenizer, run.options)  # issue 15
    checkpointer = run.checkpointer()
    restored = checkpointer.restore(run.abstract_state, iterator, run.model_cfg)
    save_run_files(run)  # once the workdir's checkpoints (if any) restored: the config that trains
    if restored is None:
        state, start = fresh_state(run), 0
        log.info("starting from scratch: %s", describe(run))
    else:
        state, start = restored
        log.info("resumed from step %d in %s", start, checkpointer.directory)
    writer = MetricsWriter(run.workdir, start_step=start, enabled=run.is_writer)
    check = _FiniteCheck(run, checkpointer)
    teacher = () if run.teacher is None else (run.teacher,)
    last, step, saved, interval = {}, start, start, _Interval(run)
    progress = _Progress(run, start, last_step)
    try:
        while step < last_step and not stop_requested(run, stop, step - start):
            host_batch = next(iterator)
            batch = global_batch(host_batch, program.batch_sharding)
            if step == start:
                progress.compiled(_compile_first_step(run, state, batch, teacher))
            state, metrics = program.step(state, batch, *teacher)  # dispatched; runs while the host goes on
            step += 1
            interval.add(host_batch, batch)
            check.pending(step, metrics, host_batch["record"])  # checks the previous step: done by now
            if step % c.train.log_every == 0 or step == run.total_steps or step == start + 1:
                check.now()
                last = log_metrics(run, step, jax.device_get(metrics), interval.take(), writer)
                progress.line(step, last, interval.total_tokens)
            elif progress.due():  # a line every PROGRESS_SECONDS between metrics rows
                progress.line(step, _row(run, step, jax.device_get(metrics)), interval.total_tokens)
            if step % c.checkpoint.every_steps == 0 and step < run.total_steps:
                check.now()
                checkpointer.save(step, state, iterator, run.meta)
                saved = step
        check.now()
        if step > saved:
            checkpointer.save(step, state, iterator, run.meta, force=True)
        checkpointer.wait()
    except BaseException:
        _finish_pending_save(checkpointer)
        raise
    finally:
        writer.close()
    _report_end(stop, step, check.skipped, checkpointer)
    if run.is_writer:
        plot = _plot(run.workdir)
        if stop.signum is None:
            progress.done(step, checkpointer.directory, writer.path, plot)
    return Trained.of(run, state=state, step=step, metrics=last, skipped_steps=check.skipped, signum=stop.signum)


def _compile_first_step(run: Run, state, batch: dict, teacher: tuple) -> float:
    """Compile the step ahead of its first call (the call reuses the executable) and, with
    several processes, meet the others before it runs its first collective; returns the
    seconds the compilation took."""
    started = time.time()
    log.info("compiling the train step (the first step waits for it; minutes for a large model)")
    run.program.step.lower(state, batch, *teacher).compile()
    seconds = time.time() - started
    log.info("compiled the train step in %.1f s", seconds)
    distributed.wait_for_all_processes("laser_jax/first_step")
    return seconds


PROGRESS_SECONDS = 20.0  # wall time between progress lines when metrics rows are further apart


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _Progress:
    """Progress lines: step/total, elapsed time, ETA, tokens/s, the main losses; one with each
    metrics row and, between rows, one every PROGRESS_SECONDS (metrics.jsonl is not touched)."""

    def __init__(self, run: Run, start: int, last_step: int):
        self.run, self.start, self.last_step = run, start, last_step
        self.t_start = self.t_line = self.t_steps = time.perf_counter()
        self.compile_s = 0.0
        self.tokens_line = 0.0
        self.peak_source = run_peaks(run)["source"]
        self.peak_noted = False  # "no peak known" is said on the first line only

    def compiled(self, seconds: float) -> None:
        """The first step is compiled: step rates (ETA) are measured from now."""
        self.compile_s = seconds
        self.t_steps = self.t_line = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.t_line >= PROGRESS_SECONDS

    def line(self, step: int, row: dict, total_tokens: float) -> None:
        throughput_text = _throughput_text(row, self.peak_source, note_missing_peak=not self.peak_noted)
        self.peak_noted = self.peak_noted or "step_time_s" in row
        now = time.perf_counter()
        done, left = step - self.start, max(self.last_step - step, 0)
        eta = left * (now - self.t_steps) / done if done else 0.0
        tokens_per_s = (total_tokens - self.tokens_line) / max(now - self.t_line, 1e-9)
        self.t_line, self.tokens_line = now, total_tokens
        if "loss_cl_latent" not in row:  # issue 15: a causal-LM run
            log.info("step %d/%d (%d%%) | %s elapsed, ETA %s | %.0f tok/s | lm loss %.4f | token acc %.3f | "
                     "lr %.2e%s", step, self.run.total_steps, 100 * step // max(self.run.total_steps, 1),
                     _duration(now - self.t_start), _duration(eta), tokens_per_s, row["loss"], row["acc"],
                     row["learning_rate"], throughput_text)
            return
        log.info("step %d/%d (%d%%) | %s elapsed, ETA %s | %.0f tok/s | loss %.4f (cl_lat %.3f cl_exp %.3f "
                 "kl_out %.4f kl_mid %.4f) | acc %.2f/%.2f | lr %.2e%s", step, self.run.total_steps,
                 100 * step // max(self.run.total_steps, 1), _duration(now - self.t_start), _duration(eta),
                 tokens_per_s, row["loss"], row["loss_cl_latent"], row["loss_cl_explicit"], row["loss_kl_out"],
                 row["loss_kl_mid"], row["acc_latent"], row["acc_explicit"], row["learning_rate"],
                 throughput_text)

    def done(self, step: int, checkpoints: str, metrics_path: str, plot: Optional[str]) -> None:
        log.info("trained to step %d in %s (%.0f s compiling); checkpoints in %s, metrics in %s%s", step,
                 _duration(time.perf_counter() - self.t_start), self.compile_s, checkpoints, metrics_path,
                 f", training curves in {plot}" if plot else "")


def _plot(workdir: str) -> Optional[str]:
    """WORKDIR/training_curves.png (train/plot.py); a failure to plot is only a warning."""
    try:
        return plot_metrics(workdir)
    except Exception as e:  # the run itself succeeded
        log.warning("could not plot the training curves: %s: %s", type(e).__name__, e)
        return None


def _report_end(stop: faults.StopSignals, step: int, skipped: List[int], checkpointer: ckpt_lib.Checkpointer):
    if skipped:
        log.warning("skipped %d non-finite step(s): %s (train.nonfinite=skip)", len(skipped), skipped)
    if stop.signum is not None:
        where = (f"checkpoint step {step} in {checkpointer.directory}" if step
                 else "no step was taken, nothing to checkpoint")
        log.warning("stopped by signal %d at step %d (%s); rerun the same command to resume",
                    stop.signum, step, where)


def save_run_files(run: Run) -> None:
    """WORKDIR/tokenizer (once) and WORKDIR/run_config.json, by the writing process."""
    if not run.is_writer:
        return
    target = os.path.join(run.workdir, ckpt_lib.TOKENIZER)
    if not os.path.exists(os.path.join(target, "tokenizer_config.json")):
        run_files.save_tokenizer(run.tokenizer, target)
    with open(os.path.join(run.workdir, "run_config.json"), "w") as f:
        f.write(run.config.to_json(indent=2))


def fresh_state(run: Run):
    """The initial TrainState on the mesh: random, or `model.init_from`'s weights plus
    fresh LoRA adapters and optimizer state."""
    c, program = run.config, run.program
    rng = jax.random.key(c.train.seed)
    if not c.model.init_from:
        init = jax.jit(lambda r: init_state(run.model_cfg, program.tx, r), out_shardings=program.state_shardings)
        return init(rng)
    shardings = program.state_shardings
    params_shardings = (shardings.frozen if run.model_cfg.lora_rank else shardings.trainable)["params"]
    load = gguf_io.load_params if gguf_io.is_gguf(c.model.init_from) else hf_io.load_params
    params = load(c.model.init_from, run.model_cfg, params_shardings)
    init = jax.jit(lambda r, p: init_state(run.model_cfg, program.tx, r, base_params=p), out_shardings=shardings)
    return init(rng, params)


def global_batch(host_batch: dict, batch_sharding) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over (data, fsdp)."""
    if "ids" in host_batch:  # issue 15: a causal-LM batch
        return lm.global_batch(host_batch, batch_sharding)
    if jax.process_count() > 1:  # every host must feed the same shapes
        local = np.array([host_batch[f"{v}_ids"].shape[1] for v in ("q", "d", "e")])
        widest = np.max(multihost_utils.process_allgather(local), axis=0)
        host_batch = repad_left(host_batch, dict(zip(("q", "d", "e"), widest.tolist())))
    out = {}
    for key in BATCH_KEYS:
        local = host_batch[key]
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(batch_sharding, local, global_shape)
    return out


def stop_requested(run: Run, stop: faults.StopSignals, steps_done: int) -> bool:
    """Whether to stop now (`steps_done` steps into this run): this process's signal or,
    in a multi-process run, any process's (compared at the first step and then every
    train.log_every steps, so all processes stop at the same one)."""
    agreed = faults.agreed_stop(stop.signum, steps_done, run.config.train.log_every,
                                jax.process_count(), multihost_utils.process_allgather)
    if agreed is not None and stop.signum is None:
        stop.signum = agreed
        log.warning("another process received signal %d: stopping with it", agreed)
    return agreed is not None


def _finish_pending_save(checkpointer: ckpt_lib.Checkpointer) -> None:
    """On an error, let an asynchronous save of an earlier (good) step complete, so the
    newest checkpoint on disk is whole; its own failure is only logged."""
    try:
        checkpointer.wait()
    except Exception as e:  # the original error matters more
        log.warning("the pending checkpoint save did not complete: %s", e)


class _FiniteCheck:
    """Stop (train.nonfinite=stop) or warn and go on (skip) after a non-finite step; the
    step itself already left the parameters and optimizer state unchanged.

    A step's metrics are read one step late (`pending`), when the device is done with it,
    or at once (`now`) before logging and checkpointing.
    """

    def __init__(self, run: Run, checkpointer: ckpt_lib.Checkpointer):
        self.run, self.checkpointer = run, checkpointer
        self.unchecked = None
        self.skipped: List[int] = []

    def pending(self, step: int, metrics: dict, records: np.ndarray) -> None:
        self.now()
        self.unchecked = (step, metrics, records)

    def now(self) -> None:
        if self.unchecked is not None:
            step, metrics, records = self.unchecked
            self.unchecked = None
            self._check(step, metrics, records)

    def _check(self, step: int, metrics: dict, records: np.ndarray) -> None:
        if bool(jax.device_get(metrics["finite"])):
            return
        msg = faults.nonfinite_message(step, jax.device_get(metrics), records,
                                       getattr(self.run.source, "location", None))
        if self.run.config.train.nonfinite == "skip":
            self.skipped.append(step)
            log.warning("%s; the update was skipped (train.nonfinite=skip)", msg)
            return
        kept = self.checkpointer.latest_step()
        raise faults.NonFiniteLossError(
            msg + f". The update was not applied and nothing was saved after it; the last good checkpoint "
            f"({'step %d' % kept if kept is not None else 'none yet'}, {self.checkpointer.directory}) is intact. "
            "Set train.nonfinite=skip to skip such steps.")


class _Interval:
    """Steps, real tokens and FLOPs (executed and 6PT, laser_jax/train/flops.py) since the last
    metrics row, and the wall time they took."""

    def __init__(self, run: Run):
        self.explicit = run.program.step_cfg.loss.needs_explicit
        self.lm = run.program.step_cfg.objective == "causal_lm"  # issue 15
        self.num_thinking_steps = run.config.laser.num_thinking_steps
        self.model_cfg = run.model_cfg
        self._flops_of = {}  # batch shapes -> StepFlops (one per length bucket)
        self._reset()
        self.total_tokens = 0.0  # since the loop began (progress lines' tokens/s)

    def _reset(self):
        self.t0, self.steps, self.tokens = time.perf_counter(), 0, 0.0
        self.flops = StepFlops(model_6pt=0.0, executed=0.0)

    def add(self, host_batch: dict, batch: dict) -> None:
        """One step: its real (non-padding) tokens (this host's share x hosts) and FLOPs."""
        if self.lm:  # issue 15
            real = lm.real_tokens(host_batch)
            shapes = (("ids", batch["ids"].shape),)
            if shapes not in self._flops_of:
                self._flops_of[shapes] = lm.step_flops(self.model_cfg, batch["ids"].shape)
        else:
            real = sum(int(host_batch[k].sum()) for k in ("q_mask", "d_mask", "e_mask")
                       if k != "e_mask" or self.explicit)
            shapes = tuple((k, batch[k].shape) for k in ("q_ids", "d_ids", "e_ids") if k in batch)
        if shapes not in self._flops_of:
            self._flops_of[shapes] = train_step_flops(self.model_cfg, dict(shapes), self.num_thinking_steps,
                                                      self.explicit)
        step = self._flops_of[shapes]
        self.steps += 1
        self.tokens += float(real * jax.process_count())
        self.total_tokens += float(real * jax.process_count())
        self.flops = StepFlops(self.flops.model_6pt + step.model_6pt, self.flops.executed + step.executed)

    def take(self) -> dict:
        stats = dict(steps=self.steps, tokens=self.tokens, flops=self.flops, seconds=time.perf_counter() - self.t0)
        self._reset()
        return stats


def run_peaks(run: Run) -> dict:
    """The per-device peaks MFU is computed against (flops.peak_rates) and, as "source", where
    the data-sheet figure came from."""
    kind = jax.devices()[0].device_kind
    peaks = peak_rates(kind, run.config.train.peak_tflops)
    return {**peaks, "source": "train.peak_tflops" if run.config.train.peak_tflops else f"{kind} data sheet"}


def _row(run: Run, step: int, metrics: dict) -> dict:
    """A step's losses, accuracies and learning rate."""
    m = {k: float(v) for k, v in metrics.items() if k not in ("finite", "tokens")}
    return {"step": step, **m, "learning_rate": float(run.program.schedule(step - 1))}


def log_metrics(run: Run, step: int, metrics: dict, interval: dict, writer: MetricsWriter) -> dict:
    """One metrics.jsonl row (the progress line is `_Progress.line`'s); returns the row."""
    seconds = max(interval["seconds"], 1e-9)
    peaks = {k: v for k, v in run_peaks(run).items() if k != "source"}
    row = {**_row(run, step, metrics), "step_time_s": seconds / max(interval["steps"], 1),
           "tokens_per_s": interval["tokens"] / seconds,
           # tflops_per_s: executed matmul FLOPs (LoRA / remat as configured); model_tflops_per_s:
           # the 6PT convention; mfu / mfu_measured_peak: executed vs the data-sheet / measured peak.
           **throughput(interval["flops"], seconds, jax.device_count(), peaks)}
    writer.write(row)
    return row


def _throughput_text(row: dict, peak_source: str = "", note_missing_peak: bool = True) -> str:
    """The step time, per-device FLOP rates and MFU (naming the peak) of a metrics row ("" for
    a progress-only row); without a known peak, how to give one (when `note_missing_peak`)."""
    if "step_time_s" not in row:
        return ""
    text = (f" | {row['step_time_s']:.3f}s/step | {row['tflops_per_s']:.3f} TFLOP/s/device executed "
            f"({row['model_tflops_per_s']:.3f} by 6PT)")
    if "mfu" in row:
        text += f" | MFU {100 * row['mfu']:.1f}% of {row['peak_tflops']:g} TFLOP/s ({peak_source})"
    if "mfu_measured_peak" in row:
        text += f", {100 * row['mfu_measured_peak']:.1f}% of the measured {row['peak_tflops_measured']:g}"
    if "mfu" not in row and "mfu_measured_peak" not in row and note_missing_peak:
        text += " | no peak known for this device: set train.peak_tflops for MFU"
    return text


def describe(run: Run) -> str:
    c, cfg = run.config, run.model_cfg
    if lm.is_lm(c):  # issue 15
        return lm.describe(run)
    return (f"{cfg.family} {cfg.num_params() / 1e6:.1f}M params "
            f"({'LoRA r=%d' % c.lora.rank if c.lora.rank else 'full fine-tuning'}), mesh {dict(run.mesh.shape)}, "
            f"{len(run.source)} records, {run.total_steps} steps of {c.train.batch_size} queries x "
            f"{c.data.group_size} docs, K={c.laser.num_thinking_steps}")
