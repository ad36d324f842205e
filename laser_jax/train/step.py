"""The train state, optimizer, and one pure, shardable LaSER train step.

`train_step(state, batch)` runs both views and the losses through one backbone (with
gradient accumulation over micro-batches), clips, and applies AdamW. A non-finite loss or
gradient leaves the state unchanged (the host then stops or skips, by config), so NaN
parameters are never produced. `jit_train_step` wraps it with shardings and donation.
With `cache_chunk_size` > 0 the gradient is computed GradCache-style
(`laser_jax.train.cached_step`), still over the whole batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from laser_jax.train import sharding
from laser_jax.method.losses import LossConfig
from laser_jax.model.config import ModelConfig
from laser_jax.model.decoder import LATENT, PAUSE, Decoder, init_variables, mean_embedding
from laser_jax.model.layers import LORA, dtype_of
from laser_jax.model.lora import adapters_for_compute
from laser_jax.method.objective import laser_objective
from laser_jax.method.lm_objective import LM_BATCH_KEYS, causal_lm_objective  # issue 15: train.objective
from laser_jax.train.cached_step import cached_gradients
from laser_jax.train.microbatches import split_microbatches

BATCH_KEYS = ("q_ids", "q_mask", "d_ids", "d_mask", "e_ids", "e_mask", "e_seg")


@flax.struct.dataclass
class TrainState:
    """step: int32 []; trainable: {"params"} (full fine-tuning) or {"lora"} (LoRA), plus
    {"latent"} (the pause vector) with soft_token "pause" either way; frozen: {"params"}
    in LoRA mode (stored in the compute dtype) else {};
    opt_state: optax state of `trainable`; rng: uint32 [2] base key."""

    step: jax.Array
    trainable: Dict[str, Any]
    frozen: Dict[str, Any]
    opt_state: Any
    rng: jax.Array

    def variables(self) -> dict:
        return {**self.frozen, **self.trainable}


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step."""

    num_thinking_steps: int
    loss: LossConfig
    eos_id: int
    grad_accum_steps: int = 1
    cache_chunk_size: int = 0  # >0: cached (GradCache) step over chunks of this many queries
    objective: str = "laser"  # issue 15: "laser" | "causal_lm" (method/lm_objective.py; batch ids, mask)


def learning_rate_schedule(peak: float, total_steps: int, warmup_ratio: float, schedule: str = "linear",
                           min_lr_ratio: float = 0.0, warmup_steps: int = 0):
    """Linear warm-up from 0 over `warmup_steps` (or, when 0, warmup_ratio * total steps),
    then decay to `min_lr_ratio` * peak at the last step: linear (Hugging Face's
    get_linear_schedule_with_warmup when min_lr_ratio = 0) or cosine (a cosine with a floor)."""
    warmup = int(warmup_steps) if warmup_steps else int(warmup_ratio * total_steps)
    floor = peak * min_lr_ratio
    decay_steps = max(total_steps - warmup, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=min_lr_ratio)
    elif schedule == "linear":
        decay = optax.linear_schedule(peak, floor, decay_steps)
    else:
        raise ValueError(f"train.schedule must be linear or cosine, got {schedule!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def run_schedule(train_cfg, total_steps: int):
    """The schedule of a run's `config.train` section."""
    return learning_rate_schedule(train_cfg.learning_rate, total_steps, train_cfg.warmup_ratio,
                                  train_cfg.get("schedule", "linear"), train_cfg.get("min_lr_ratio", 0.0),
                                  train_cfg.get("warmup_steps", 0))


def make_optimizer(train_cfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW with the schedule above and optional global-norm clipping (from `config.train`)."""
    schedule = run_schedule(train_cfg, total_steps)
    parts = []
    if train_cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(train_cfg.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=train_cfg.adam_b1, b2=train_cfg.adam_b2, eps=train_cfg.adam_eps,
                             weight_decay=train_cfg.weight_decay))
    return optax.chain(*parts)


def split_variables(cfg: ModelConfig, variables: dict):
    """(trainable, frozen): LoRA adapters train and the base is frozen (cast to the compute
    dtype, as it is only ever used in it); without LoRA every parameter trains. The pause
    vector (`latent`, soft_token "pause") trains in both modes."""
    latent = {LATENT: variables[LATENT]} if LATENT in variables else {}
    if cfg.lora_rank:
        cdt = dtype_of(cfg.compute_dtype)
        frozen = jax.tree_util.tree_map(lambda x: x.astype(cdt), {"params": variables["params"]})
        return {LORA: variables[LORA], **latent}, frozen
    return {"params": variables["params"], **latent}, {}


def init_state(cfg: ModelConfig, tx, rng, base_params=None, boxed: bool = False) -> TrainState:
    """A fresh state: random init (or `base_params` from a checkpoint plus fresh LoRA; a
    pause vector then starts as the mean of those params' embedding table)."""
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(cfg, init_rng, boxed=True)
    if base_params is not None:
        variables = {**variables, "params": base_params}
        if LATENT in variables:
            pause = variables[LATENT][PAUSE]
            value = mean_embedding(base_params["embed_tokens"]["embedding"], cfg)
            variables[LATENT] = {PAUSE: pause.replace_boxed(value) if isinstance(pause, nn.Partitioned)
                                 else value}
    trainable, frozen = split_variables(cfg, variables)
    state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                       opt_state=tx.init(trainable), rng=jax.random.key_data(state_rng))
    return state if boxed else nn.unbox(state)


def _tree_where(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


def train_step(model: Decoder, tx, step_cfg: StepConfig, state: TrainState, batch: Mapping[str, jax.Array],
               teacher_variables=None):
    """One optimizer step. Returns (new state, metrics dict of float32 scalars).

    With `step_cfg.cache_chunk_size` > 0 the gradient comes from the cached three-pass
    computation of `laser_jax.train.cached_step` (same value, activation memory of one chunk).
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    lm = step_cfg.objective == "causal_lm"  # issue 15
    batch = {k: v for k, v in batch.items() if k in (LM_BATCH_KEYS if lm else BATCH_KEYS)}

    def loss_fn(trainable, micro, key):
        variables = {**state.frozen, **adapters_for_compute(trainable, model.cfg)}
        if lm:
            return causal_lm_objective(model, variables, micro, key)
        return laser_objective(model, variables, micro, num_steps=step_cfg.num_thinking_steps,
                               loss_cfg=step_cfg.loss, eos_id=step_cfg.eos_id, rng=key,
                               teacher_variables=teacher_variables)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    n = step_cfg.grad_accum_steps
    if step_cfg.cache_chunk_size:
        grads, metrics = cached_gradients(model, step_cfg, state.trainable, state.frozen, batch, rng,
                                          teacher_variables)
    elif n == 1:
        (_, metrics), grads = grad_fn(state.trainable, batch, rng)
    else:
        micro = split_microbatches(batch, n)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.trainable)

        def accumulate(carry, xs):
            grads_sum, metrics_sum = carry
            mb, i = xs
            (_, m), g = grad_fn(state.trainable, mb, jax.random.fold_in(rng, i))
            grads_sum = jax.tree_util.tree_map(jnp.add, grads_sum, g)
            metrics_sum = jax.tree_util.tree_map(jnp.add, metrics_sum, m)
            return (grads_sum, metrics_sum), None

        zero_metrics = jax.eval_shape(lambda: grad_fn(state.trainable, jax.tree_util.tree_map(lambda x: x[0], micro),
                                                      rng)[0][1])
        zero_metrics = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics)
        (grads, metrics), _ = jax.lax.scan(accumulate, (zeros, zero_metrics), (micro, jnp.arange(n)))
        grads = jax.tree_util.tree_map(lambda g: g / n, grads)
        metrics = jax.tree_util.tree_map(lambda m: m / n, metrics)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state.opt_state, state.trainable)
    new_trainable = optax.apply_updates(state.trainable, updates)
    new_state = state.replace(
        step=state.step + 1,
        trainable=_tree_where(finite, new_trainable, state.trainable),
        opt_state=_tree_where(finite, new_opt, state.opt_state))
    metrics = dict(metrics, l2_grads=grad_norm, l2_params=optax.tree.norm(state.trainable),
                   finite=finite.astype(jnp.float32),
                   tokens=sum(jnp.sum(batch[k]).astype(jnp.float32) for k in ("q_mask", "d_mask", "e_mask", "mask")
                              if k in batch))
    return new_state, metrics


def jit_train_step(model: Decoder, tx, step_cfg: StepConfig, state_shardings, batch_sharding,
                   teacher_sharding=None):
    """The step jitted with explicit shardings; the state's buffers are donated. With a
    `teacher_sharding` (one sharding for all of a frozen teacher's variables) the step takes
    the teacher's variables as a third argument. Activations stay split over the batch axes
    of the state's mesh (`sharding.batch_sharded_activations`)."""
    mesh = jax.tree_util.tree_leaves(state_shardings)[0].mesh

    def fn(*args):
        with sharding.batch_sharded_activations(mesh):
            return train_step(model, tx, step_cfg, *args)

    in_shardings = (state_shardings, batch_sharding) + ((teacher_sharding,) if teacher_sharding is not None else ())
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=(state_shardings, None), donate_argnums=(0,))
