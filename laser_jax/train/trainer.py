"""A training run's set-up: from a config to everything the loop (train/loop.py) reads.

`set_up(config, workdir)` checks every input before anything is compiled or trained (the
data, the tokenizer, the model directories, the mesh: each error names its config field),
reads the training records, builds the jitted program (`setup.build_program`) and loads a
frozen teacher when `laser.teacher_from` names one. It returns a frozen `Run`; the loop
returns a `Trained` (the run plus its final state), which the final evaluation reads.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from laser_jax.data.errors import ConfigError
from laser_jax.data.formatting import TextFormat
from laser_jax.data.options import PipelineOptions
from laser_jax.data.pipeline import steps_per_epoch
from laser_jax.data.sources import open_records
from laser_jax.inference.load import load_for_inference
from laser_jax.model import lora as lora_lib
from laser_jax.model.config import ModelConfig
from laser_jax.model.decoder import Decoder, init_variables
from laser_jax.train import checkpoint as ckpt_lib
from laser_jax.train import faults, lm, setup
from laser_jax.train.config import ARCH_FIELDS
from laser_jax.train.step import TrainState

log = logging.getLogger("laser_jax")


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a training run is set up with.

    Attributes:
      config: the run config (laser_jax.train.config).
      workdir: checkpoints, metrics and the tokenizer go here.
      is_writer: this process writes the run's files (process 0).
      paths: the training files, tokenizer and evaluation directories.
      tokenizer: the run's tokenizer.
      text_format: query template and chat wrapping (saved with every checkpoint).
      model_cfg: the model.
      source: the training records (validated).
      options: the input pipeline's options (data/lm_pipeline.LMOptions for train.objective=causal_lm).
      program: the jitted training program and its mesh, optimizer and shardings.
      teacher: a frozen teacher's variables on the mesh (`laser.teacher_from`), or None.
      meta: what every checkpoint stores beside the state.
    """

    config: ml_collections.ConfigDict
    workdir: str
    is_writer: bool
    paths: setup.DataPaths
    tokenizer: Any
    text_format: TextFormat
    model_cfg: ModelConfig
    source: Any
    options: PipelineOptions
    program: setup.Program
    teacher: Optional[dict]
    meta: dict

    @property
    def model(self) -> Decoder:
        return self.program.model

    @property
    def mesh(self):
        return self.program.mesh

    @property
    def abstract_state(self) -> TrainState:
        return self.program.abstract_state

    @property
    def total_steps(self) -> int:
        return self.program.total_steps

    def checkpointer(self) -> ckpt_lib.Checkpointer:
        """A checkpointer of WORKDIR/checkpoints with the run's retention and async settings."""
        c = self.config.checkpoint
        return ckpt_lib.Checkpointer(self.workdir, c.keep, c.async_save)


@dataclasses.dataclass(frozen=True)
class Trained(Run):
    """A run after its loop: the set-up, the final state and how the loop ended.

    Attributes:
      state: the final TrainState (None when stopped before the first step).
      step: the last step taken.
      metrics: the last logged metrics row ({} when none was logged).
      skipped_steps: the non-finite steps skipped (train.nonfinite=skip).
      signum: the signal that stopped the run, or None.
    """

    state: Optional[TrainState] = None
    step: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)
    skipped_steps: List[int] = dataclasses.field(default_factory=list)
    signum: Optional[int] = None

    @classmethod
    def of(cls, run: Run, **outcome) -> "Trained":
        return cls(**{f.name: getattr(run, f.name) for f in dataclasses.fields(Run)}, **outcome)

    def inference_variables(self) -> dict:
        """Trained variables on the host (for evaluation at the end of a run); gathered from
        every process when parameters are split across hosts."""
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(self.state.variables(), tiled=True)
        return jax.device_get(self.state.variables())


def set_up(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Check the inputs, read the records, build the program, load a teacher (module doc).

    Raises:
      ConfigError, DataError, FileNotFoundError, CheckpointMismatchError: bad input, named
        (a config that cannot resume WORKDIR's checkpoints before anything is written there).
    """
    c = config
    is_writer = jax.process_index() == 0
    paths, tokenizer, model_cfg, source = check_inputs(c, workdir, write=is_writer)
    mesh = setup.run_mesh(c, setup.run_devices(c))
    if lm.is_lm(c):  # issue 15: causal-LM rows (data/lm_pipeline.py)
        options, total_steps = lm.options_and_steps(c, source, jax.process_index(), jax.process_count())
        if is_writer:
            log.info("training data: %s", source.summary)
    else:
        summary = getattr(source, "summary", None)
        if is_writer and summary is not None:
            (log.warning if summary.num_skipped else log.info)("training data: %s", summary)
        options = setup.pipeline_options(c, jax.process_index(), jax.process_count())
        total_steps = c.train.num_steps or steps_per_epoch(len(source), options)
    eos_id = tokenizer.eos_token_id
    program = setup.build_program(c, model_cfg, mesh, total_steps, eos_id, teacher=bool(c.laser.teacher_from))
    text_format = setup.text_format(c)
    meta = ckpt_lib.make_meta(c, model_cfg, text_format, c.laser.num_thinking_steps, eos_id)
    return Run(config=c, workdir=workdir, is_writer=is_writer, paths=paths, tokenizer=tokenizer,
               text_format=text_format, model_cfg=model_cfg, source=source, options=options, program=program,
               teacher=load_teacher(c.laser.teacher_from, program), meta=meta)


def check_inputs(config: ml_collections.ConfigDict, workdir: Optional[str], write: bool = True,
                 data_dir: Optional[str] = None) -> Tuple[setup.DataPaths, Any, ModelConfig, Any]:
    """The checks of a run's inputs that need no accelerator: the workdir (its checkpoints
    against this config; writable), the data, the evaluation directory, the tokenizer, the
    model and its weights. Returns (paths, tokenizer, model config, training records).

    Args:
      config: a validated run config.
      workdir: the run's directory (None: not checked).
      write: create WORKDIR (and the synthetic task in WORKDIR/data when needed); False
        writes nothing there (`--check`: the synthetic task goes to `data_dir` then).
      data_dir: where to generate the synthetic task instead of WORKDIR/data.
    """
    c = config
    if workdir:
        check_resume(c, workdir)  # before anything is written to the workdir
        if write:
            make_writable_workdir(workdir)
        else:
            check_writable(workdir)
    paths = setup.resolve_data(c, workdir or "", data_dir)
    setup.check_eval_dir(paths)
    if c.model.init_from:  # its config.json first: transformers reads it too, with less clear errors
        setup.model_config(c, None)
    tokenizer = setup.load_tokenizer(paths)
    model_cfg = setup.model_config(c, tokenizer)
    setup.check_init_weights(c)
    if lm.is_lm(c):  # issue 15
        return paths, tokenizer, model_cfg, lm.open_source(c, paths, tokenizer)
    source = open_records(paths.train_files, group_size=c.data.group_size, skip_bad_records=c.data.skip_bad_records)
    return paths, tokenizer, model_cfg, source


def check_writable(workdir: str) -> None:
    """Without writing: WORKDIR, or the directory it would be created in, is writable."""
    if "://" in workdir:
        return
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        reason = "not a directory" if not os.path.isdir(existing) else "not writable"
        raise ConfigError(f"--workdir: {workdir}: cannot write there ({existing}: {reason}); "
                          "choose a writable --workdir")


def make_writable_workdir(workdir: str) -> None:
    """Create WORKDIR if needed and check that files can be written there (a read-only
    directory or file system is reported now, not at the first file after compiling).

    Raises:
      ConfigError: naming the directory (a full disk propagates as itself: exit 4).
    """
    if "://" in workdir:  # a bucket: its writes are checked by the first save
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".laser_jax_write_check"):
            pass
    except OSError as e:
        if faults.is_disk_full(e):
            raise
        raise ConfigError(f"--workdir: {workdir}: cannot write there ({e.strerror or e}"
                          f"{': ' + e.filename if e.filename and e.filename != workdir else ''}); "
                          "choose a writable --workdir") from None


# ModelConfig fields that fix the shapes and structure of the saved state, and the config field
# that sets each ("" = the architecture source, model.init_from or model.preset).
_STRUCTURE_FIELDS = {**{f: f"model.{f}" for f in ARCH_FIELDS}, "family": "", "tie_word_embeddings": "",
                     "attention_bias": "", "qk_norm": "", "scan_layers": "model.scan_layers",
                     "lora_rank": "lora.rank", "lora_targets": "lora.targets",
                     "soft_token": "laser.soft_token"}


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuse, before anything is written to WORKDIR, a config whose model cannot resume the
    checkpoints WORKDIR holds (another architecture, LoRA setting or layer layout).

    Raises:
      ConfigError: naming every differing field, its value here and in the checkpoint.
    """
    found = ckpt_lib.newest_meta(workdir)
    if found is None or "model" not in found[2]:
        return
    step, directory, meta = found
    here = dataclasses.asdict(setup.model_config(config, None))
    source = "model.init_from" if config.model.init_from else "model.preset"
    problems = []
    for name, field in _STRUCTURE_FIELDS.items():
        ours, theirs = here.get(name), meta["model"].get(name)
        if name == "lora_targets":
            ours, theirs = ",".join(ours or ()), ",".join(theirs or ())
        if name not in meta["model"] or ours == theirs:
            continue
        label = field or f"{source} ({name})"
        problems.append(f"{label}: {ours!r} here, {theirs!r} in the checkpoint")
    if problems:
        raise ConfigError(
            f"--workdir: {workdir} holds checkpoints of another model (step {step} in {directory}), which this "
            f"config cannot resume: {'; '.join(problems)}. Use a new --workdir, or the checkpoint's settings to "
            "resume; nothing was written")


def load_teacher(path: str, program: setup.Program) -> Optional[dict]:
    """A frozen teacher's variables ("no co-learning"), replicated over the program's mesh;
    None without a path. A teacher with other LoRA settings than the student is merged into
    plain parameters (plus zero adapters when the student has LoRA, so the student's module
    structure applies to it)."""
    if not path:
        return None
    student = program.model_cfg
    loaded = load_for_inference(path, student.compute_dtype)
    if (loaded.cfg.hidden_size, loaded.cfg.vocab_size) != (student.hidden_size, student.vocab_size):
        raise ConfigError(f"laser.teacher_from: {path} has hidden/vocab "
                          f"{loaded.cfg.hidden_size}/{loaded.cfg.vocab_size}, the student "
                          f"{student.hidden_size}/{student.vocab_size}")
    if loaded.cfg.soft_token != student.soft_token:  # the teacher encodes documents with the student's latent view
        raise ConfigError(f"laser.teacher_from: {path} was trained with soft_token={loaded.cfg.soft_token!r}, "
                          f"this run has laser.soft_token={student.soft_token!r}; train the teacher with the same")
    variables = loaded.variables
    if loaded.cfg.lora_rank != student.lora_rank or loaded.cfg.lora_targets != student.lora_targets:
        params = variables["params"]
        if "lora" in variables:
            params = lora_lib.merge(params, variables["lora"], loaded.cfg)
        variables = {"params": params}
        if student.lora_rank:
            variables["lora"] = jax.tree_util.tree_map(jnp.zeros_like,
                                                       init_variables(student, jax.random.key(0))["lora"])
    return jax.device_put(variables, program.teacher_sharding)
