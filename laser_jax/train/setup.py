"""Turn a run config into the objects a run needs: data paths, tokenizer, model config,
pipeline options, loss config (each named field checked, each error naming it), and the
one builder of the jitted training program (`Program`, `build_program`), used by the
training run and the memory plan alike."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding

from laser_jax.data.errors import ConfigError
from laser_jax.data.options import PipelineOptions
from laser_jax.data.formatting import TextFormat
from laser_jax.inference.load import load_tokenizer as load_tokenizer_dir
from laser_jax.inference.load import require_intact
from laser_jax.method.losses import LossConfig
from laser_jax.model.config import ModelConfig, from_hf_config, preset, resolve_attention_impl
from laser_jax.train.config import ARCH_FIELDS, lora_targets, soft_token
from laser_jax.data.synthetic import config_args, ensure_generated
from laser_jax.model.decoder import Decoder
from laser_jax.model.hf_io import SafetensorsDir
from laser_jax.retrieval import bright
from laser_jax.storage import DamagedFileError
from laser_jax.train import sharding
from laser_jax.train.step import StepConfig, TrainState, init_state, jit_train_step, make_optimizer, \
    run_schedule


@dataclasses.dataclass(frozen=True)
class DataPaths:
    train_files: str
    tokenizer: str
    eval_dir: str
    tokenizer_field: str = "model.tokenizer"  # the config field the tokenizer directory came from


def resolve_data(config: ml_collections.ConfigDict, workdir: str, data_dir: Optional[str] = None) -> DataPaths:
    """Generate the synthetic task into WORKDIR/data (or `data_dir`) when configured; pick the
    tokenizer."""
    d, m = config.data, config.model
    train_files, tokenizer, eval_dir = d.train_files, m.tokenizer or m.init_from, d.eval_dir
    field = "model.tokenizer" if m.tokenizer or not m.init_from else "model.init_from"
    if d.synthetic:
        paths = ensure_generated(data_dir or os.path.join(workdir, "data"), **config_args(d))
        train_files = train_files or paths["train"]
        tokenizer = tokenizer or paths["tokenizer"]
        eval_dir = eval_dir or paths["eval"]
    if not tokenizer:
        raise ConfigError("model.tokenizer: empty; set model.tokenizer or model.init_from to a directory "
                          "with a Hugging Face tokenizer")
    return DataPaths(train_files, tokenizer, eval_dir, field)


def load_tokenizer(paths: DataPaths):
    """The run's tokenizer; ConfigError naming the field when the directory has none."""
    if not os.path.isdir(paths.tokenizer):
        raise ConfigError(f"{paths.tokenizer_field}: {paths.tokenizer}: no such directory")
    try:
        return load_tokenizer_dir(paths.tokenizer)
    except (FileNotFoundError, DamagedFileError) as e:  # the latter names the damaged file
        raise ConfigError(f"{paths.tokenizer_field}: {e}") from None
    except (OSError, ValueError, TypeError) as e:  # transformers: unreadable or inconsistent files
        raise ConfigError(f"{paths.tokenizer_field}: {paths.tokenizer}: the tokenizer cannot be loaded "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def model_config(config: ml_collections.ConfigDict, tokenizer, training: bool = True) -> ModelConfig:
    """The ModelConfig: from `model.init_from` (HF config.json) or `model.preset`, with the
    run-time options and any non-zero architecture overrides."""
    m, lo = config.model, config.lora
    runtime = dict(param_dtype=m.param_dtype, compute_dtype=m.compute_dtype, scan_layers=m.scan_layers,
                   unroll_soft_steps=m.unroll_soft_steps, remat_policy=m.remat_policy,
                   attention_impl=resolve_attention_impl(m.attention_impl, m.compute_dtype),
                   lora_rank=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout if training else 0.0,
                   lora_targets=lora_targets(lo.targets), soft_token=soft_token(config))
    arch = {f: getattr(m, f) for f in ARCH_FIELDS if getattr(m, f)}
    try:
        if m.init_from:
            if not os.path.isdir(m.init_from):
                raise ConfigError(f"model.init_from: {m.init_from}: no such directory")
            try:
                cfg = from_hf_config(m.init_from, **runtime)
            except FileNotFoundError as e:
                raise ConfigError(f"model.init_from: {e}") from None
            # issue 15: an architecture field may restate init_from's value; only a conflict is an error
            for name, value in sorted(arch.items()):
                if getattr(cfg, name) != value:
                    raise ConfigError(f"model.{name}: {value} conflicts with model.init_from={m.init_from!r} "
                                      f"({name}={getattr(cfg, name)} in its config.json); set it to 0 or to "
                                      "that value (init_from fixes the architecture)")
        else:
            cfg = preset(m.preset, **arch, **runtime)
            if tokenizer is not None:
                cfg = cfg.replace(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{'model.init_from' if m.init_from else 'model'}: {e}") from None
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise ConfigError(f"model.vocab_size: the model has {cfg.vocab_size} embeddings but the tokenizer "
                          f"has {len(tokenizer)} tokens")
    return cfg


def check_init_weights(config: ml_collections.ConfigDict) -> None:
    """Fail at set-up (not after compiling) when `model.init_from` has no weight files."""
    if not config.model.init_from:
        return
    try:
        require_intact(config.model.init_from, fix="export or copy the model again")  # issue 27 (when it has a manifest)
        SafetensorsDir(config.model.init_from)
    except (FileNotFoundError, ValueError) as e:  # ValueError: hf_io.WeightsFileError, a bad index
        raise ConfigError(f"model.init_from: {e}") from None


def check_eval_dir(paths: DataPaths) -> None:
    """Validate `data.eval_dir` (BRIGHT format, instructions) at set-up, so a bad evaluation
    directory is reported before training rather than after it."""
    if not paths.eval_dir:
        return
    try:
        for domain in bright.load_bright(paths.eval_dir):
            domain.require_instruction()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"data.eval_dir: {e}") from None


def pipeline_options(config: ml_collections.ConfigDict, process_index: int = 0, process_count: int = 1,
                     num_epochs: Optional[int] = None) -> PipelineOptions:
    d, t = config.data, config.train
    if t.batch_size % process_count:
        raise ConfigError(f"train.batch_size: {t.batch_size} queries do not split over {process_count} hosts")
    return PipelineOptions(
        batch_size=t.batch_size // process_count, group_size=d.group_size,
        num_thinking_steps=config.laser.num_thinking_steps, query_max_len=d.query_max_len,
        doc_max_len=d.doc_max_len, explicit_max_len=d.explicit_max_len, query_template=d.query_template,
        chat_template=d.chat_template, shuffle=d.shuffle, seed=t.seed, segment_rule=d.segment_rule,
        split_mode=d.split_mode, num_epochs=num_epochs, process_index=process_index,
        process_count=process_count, pad_multiple=d.pad_multiple,
        bucket_fractions=tuple(d.bucket_fractions) if d.bucket_fractions else None,
        num_threads=d.num_threads, prefetch=d.prefetch)


def loss_config(config: ml_collections.ConfigDict) -> LossConfig:
    la = config.laser
    return LossConfig(tau=la.tau, tau_kd=la.tau_kd, tau_mid=la.tau_mid, lambda_latent=la.lambda_latent,
                      lambda_explicit=la.lambda_explicit, lambda_kl_out=la.lambda_kl_out,
                      lambda_kl_mid=la.lambda_kl_mid, in_batch_negatives=la.in_batch_negatives)


def text_format(config: ml_collections.ConfigDict) -> TextFormat:
    return TextFormat(query_template=config.data.query_template, chat_template=config.data.chat_template)


# ---------------------------------------------------------------------------------------
# The jitted training program
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Program:
    """The jitted training program of a run config on a mesh, and what it was built from.

    Nothing is allocated: the state is abstract (`abstract_state`: ShapeDtypeStructs with
    their NamedShardings), so the same program serves a training run (which then makes or
    restores a state) and an ahead-of-time memory plan (which lowers `step` on abstract
    arguments).
    """

    model: Decoder
    model_cfg: ModelConfig
    mesh: Mesh
    tx: optax.GradientTransformation
    schedule: Callable[[Any], Any]  # step -> learning rate
    step_cfg: StepConfig
    state_shardings: TrainState  # of NamedShardings
    abstract_state: TrainState  # of ShapeDtypeStructs carrying `state_shardings`
    batch_sharding: NamedSharding  # leading (query / document) axis over data x fsdp
    teacher_sharding: Optional[NamedSharding]  # a frozen teacher's variables (replicated), or None
    step: Callable  # jitted (state, batch[, teacher variables]) -> (state, metrics); the state is donated
    total_steps: int


def run_devices(config: ml_collections.ConfigDict) -> list:
    """The devices of a run: all, or the first `mesh.num_devices`."""
    devices = jax.devices()
    n = config.mesh.num_devices
    if n and n > len(devices):
        raise ConfigError(f"mesh.num_devices: {n} requested, {len(devices)} available")
    return devices[:n] if n else devices


def run_mesh(config: ml_collections.ConfigDict, devices: Sequence, mesh_shape: Optional[Sequence[int]] = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `mesh_shape` (default `mesh.shape`) over `devices`.

    Raises:
      ConfigError: the shape does not fit the devices, or a micro-batch does not split over
        the mesh's data-parallel devices.
    """
    mesh = sharding.make_mesh(tuple(mesh_shape or config.mesh.shape), devices)
    dp = sharding.data_parallel_size(mesh)
    t = config.train
    micro = t.batch_size // t.grad_accum_steps
    if micro % dp:
        raise ConfigError(f"train.batch_size: {t.batch_size} queries in {t.grad_accum_steps} micro-batch(es) of "
                          f"{micro} do not split over the {dp} data-parallel devices of mesh {dict(mesh.shape)}")
    return mesh


def build_program(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh, total_steps: int,
                  eos_id: int, teacher: bool = False) -> Program:
    """The one builder of the jitted training program.

    Args:
      config: the run config (train, laser and loss settings are read).
      model_cfg: the model.
      mesh: from `run_mesh`.
      total_steps: optimizer steps (the learning-rate schedule's length).
      eos_id: the token appended to explicit-view inputs.
      teacher: the step takes a frozen teacher's variables (replicated) as a third argument.
    """
    t = config.train
    model = Decoder(model_cfg)
    tx = make_optimizer(t, total_steps)
    boxed = jax.eval_shape(lambda: init_state(model_cfg, tx, jax.random.key(0), boxed=True))
    state_shardings = sharding.logical_shardings(mesh, boxed)
    batch_sharding = sharding.batch_sharding(mesh)
    teacher_sharding = sharding.replicated(mesh) if teacher else None
    step_cfg = StepConfig(config.laser.num_thinking_steps, loss_config(config), eos_id, t.grad_accum_steps,
                          t.cache_chunk_size, t.objective)
    return Program(
        model=model, model_cfg=model_cfg, mesh=mesh, tx=tx,
        schedule=run_schedule(t, total_steps), step_cfg=step_cfg,
        state_shardings=state_shardings, abstract_state=sharding.abstract_sharded(nn.unbox(boxed), state_shardings),
        batch_sharding=batch_sharding, teacher_sharding=teacher_sharding,
        step=jit_train_step(model, tx, step_cfg, state_shardings, batch_sharding, teacher_sharding),
        total_steps=total_steps)
