r"""Memory plan of a training run, without its hardware: compile the real train step ahead of
time for a target mesh and read the compiler's per-device memory figures.

    python -m laser_jax.plan --config=configs/qwen7b.py --mesh=1,8,1 --devices=8 \
        --accelerator=h100 [--batch_size=8] [--cache_chunk_size=2] [--config.lora.rank=0] \
        [--output=plan.json]

Nothing is allocated: the program is the training run's own (`setup.build_program`), its
state and the batch are `jax.ShapeDtypeStruct`s carrying their NamedShardings (from the
model's logical axes, `laser_jax.train.sharding`), and
`program.step.lower(state, batch).compile().memory_analysis()` gives, per device,
the arguments, outputs, aliased (donated) and temporary bytes of the partitioned program.
Parameters and optimizer state per device are also summed from the shardings themselves.
Peak = arguments + temporaries + outputs - aliased.

Where it compiles:
- TPU (`--accelerator=v5e|v5p`): with libtpu importable (`pip install "libtpu==0.0.42.*"`,
  the version jax 0.10.2's `jax[tpu]` pins), for the real TPU topology
  (`jax.experimental.topologies`, no TPU needed); otherwise, or with `--backend=cpu`, as
  below, and the report says so.
- Otherwise on N simulated CPU devices (`jax_num_cpu_devices`, set before JAX starts).
  XLA:CPU plans buffers like the GPU compiler but fuses differently (and may widen bf16
  arithmetic to float32), so for H100/H200 its temporaries are an estimate; parameter,
  optimizer and argument bytes are exact.

The model comes from `model.preset` (plus any architecture overrides); `model.init_from`
is ignored unless it is a readable Hugging Face directory. Batch shapes are the config's
maximum lengths (`data.query_max_len`, `doc_max_len`, `explicit_max_len`), the worst case.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.experimental import topologies
from ml_collections import config_flags

from laser_jax.cli import define_help, run_cli
from laser_jax.model import gguf_io
from laser_jax.train import setup
from laser_jax.train.config import validate
from laser_jax.train.sharding import resolve_mesh_shape

GIB = 1024 ** 3
# Device memory (GiB) and the default usable fraction: what is left is headroom for the
# runtime, fragmentation and the compiler's estimate being off.
ACCELERATORS = {"h100": 80.0, "h200": 141.0, "v5e": 16.0, "v5p": 95.0}
TPU_KINDS = ("v5e", "v5p")
DEFAULT_HEADROOM = 0.9


def tpu_topology_name(accelerator: str, devices: int) -> str:
    """The libtpu topology name of `devices` chips of a TPU generation (v5e: 2D, v5p: 3D)."""
    if accelerator == "v5e":
        shapes = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
    else:
        shapes = {1: "1x1x1", 2: "1x2x1", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                  128: "4x4x8", 256: "4x8x8"}
    if devices not in shapes:
        raise ValueError(f"no {accelerator} topology of {devices} chips is known here (known: "
                         f"{sorted(shapes)}); pass --topology")
    return f"{accelerator}:{shapes[devices]}"


def tpu_devices(topology: str):
    """Devices of a TPU topology for ahead-of-time compilation (needs libtpu, not a TPU)."""
    dims = [int(x) for x in topology.split(":")[1].split("x")]
    kwargs = {}
    if math.prod(dims) < 4:  # smaller than one host: say so, or libtpu assumes a 2x2 host
        kwargs["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
    return list(topologies.get_topology_desc(topology, "tpu", **kwargs).devices)


def tree_bytes(tree, per_device: bool = True) -> int:
    """Bytes of a tree of ShapeDtypeStructs: per device (from each leaf's sharding) or total."""
    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if per_device and x.sharding is not None else x.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def abstract_batch(config, num_steps: int, batch_size: int, sharding) -> dict:
    """The batch at the config's maximum lengths: ShapeDtypeStructs with `sharding`."""
    d = config.data
    shapes = dict(q_ids=(batch_size, d.query_max_len), d_ids=(batch_size * d.group_size, d.doc_max_len),
                  e_ids=(batch_size, d.explicit_max_len))
    out = {}
    for name, shape in shapes.items():
        out[name] = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
        out[name.replace("_ids", "_mask")] = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
    out["e_seg"] = jax.ShapeDtypeStruct((batch_size, num_steps), jnp.int32, sharding=sharding)
    return out


@dataclasses.dataclass
class Plan:
    """Per-device bytes of one compiled train step and the verdict for an accelerator."""

    config: str
    model: str
    mode: str  # "LoRA r=.." or "full"
    mesh: dict
    compiled_for: str
    batch: dict
    params_trainable: int
    params_frozen: int
    optimizer_state: int
    batch_bytes: int
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    peak: int
    accelerator: str
    capacity: int
    usable: int
    fits: bool
    num_params: int
    total_param_bytes: int
    compile_seconds: float
    note: str = ""  # e.g. the TPU compiler's out-of-memory message

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def against(self, capacity: int, headroom: float = DEFAULT_HEADROOM, accelerator: str = "custom") -> "Plan":
        """The same plan judged against another device memory (`capacity` bytes)."""
        usable = int(capacity * headroom)
        return dataclasses.replace(self, accelerator=accelerator, capacity=int(capacity), usable=usable,
                                   fits=self.peak <= usable)


def plan_step(config, *, devices=None, mesh_shape: Optional[Sequence[int]] = None, accelerator: str = "h100",
              compiled_for: str = "", headroom: float = DEFAULT_HEADROOM, budget_bytes: Optional[int] = None,
              name: str = "") -> Plan:
    """Compile the real train step for `config` on `devices` and measure its memory.

    Args:
      config: a run config (`laser_jax.train.config`); train.batch_size, cache_chunk_size,
        grad_accum_steps, lora and model settings are used as they are.
      devices: the devices of the mesh (default: all of jax.devices()).
      mesh_shape: (data, fsdp, tensor), one entry may be -1 (default: config.mesh.shape).
      accelerator: a key of ACCELERATORS (its memory is the capacity).
      compiled_for: description of the devices, for the report.
      headroom: usable fraction of the capacity.
      budget_bytes: capacity override in bytes (e.g. a fake small device).
      name: the config's name, for the report.

    Returns:
      A `Plan` (bytes are per device).
    """
    devices = list(jax.devices() if devices is None else devices)
    model_cfg = setup.model_config(config, None)
    mesh = setup.run_mesh(config, devices, mesh_shape)
    eos = model_cfg.eos_token_id if model_cfg.eos_token_id is not None else 0
    program = setup.build_program(config, model_cfg, mesh, max(config.train.num_steps, 1000), eos)
    state = program.abstract_state
    batch = abstract_batch(config, config.laser.num_thinking_steps, config.train.batch_size, program.batch_sharding)
    start = time.perf_counter()
    # The memory plan is made on HLO, before code generation: skip LLVM's optimisations on CPU.
    options = {"xla_backend_optimization_level": 0} if devices[0].platform == "cpu" else {}
    note = ""
    try:
        stats = program.step.lower(state, batch).compile(compiler_options=options).memory_analysis()
        args, outs = int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes)
        alias, temp = int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes)
    except Exception as e:  # the TPU compiler refuses a program larger than the device
        temp = out_of_memory_temporaries(str(e))
        if temp is None:
            raise
        note = str(e).strip().splitlines()[0][:300]
        args = outs = alias = tree_bytes(state) + tree_bytes(batch)
    seconds = time.perf_counter() - start
    memory = dict(arguments=args, outputs=outs, aliased=alias, temporaries=temp, peak=args + temp + outs - alias)
    plan = _plan(config, program, state, batch, memory, name=name, note=note, compile_seconds=round(seconds, 1),
                 compiled_for=compiled_for or f"{len(devices)} x {devices[0].device_kind}", accelerator=accelerator)
    capacity = budget_bytes if budget_bytes is not None else ACCELERATORS[accelerator] * GIB
    return plan.against(int(capacity), headroom, accelerator)


def _plan(config, program: setup.Program, state, batch, memory: dict, **fields) -> Plan:
    """The Plan of a compiled program: its memory figures plus what the state and batch hold
    (the verdict is left to `Plan.against`)."""
    t, d, model_cfg = config.train, config.data, program.model_cfg
    params = {**state.frozen, **state.trainable}
    return Plan(
        model=_model_name(config), mode=f"LoRA r={model_cfg.lora_rank}" if model_cfg.lora_rank else "full",
        config=fields.pop("name"), mesh=dict(program.mesh.shape),
        batch=dict(queries=t.batch_size, group_size=d.group_size, query_len=d.query_max_len,
                   doc_len=d.doc_max_len, explicit_len=d.explicit_max_len,
                   num_thinking_steps=config.laser.num_thinking_steps, grad_accum_steps=t.grad_accum_steps,
                   cache_chunk_size=t.cache_chunk_size, remat=model_cfg.remat_policy,
                   compute_dtype=model_cfg.compute_dtype),
        params_trainable=tree_bytes(state.trainable), params_frozen=tree_bytes(state.frozen),
        optimizer_state=tree_bytes(state.opt_state), batch_bytes=tree_bytes(batch), **memory,
        capacity=0, usable=0, fits=False,
        num_params=sum(int(math.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)),
        total_param_bytes=tree_bytes(params, per_device=False), **fields)


def out_of_memory_temporaries(message: str) -> Optional[int]:
    """Temporaries (bytes) named by a compiler's out-of-memory error, e.g. XLA:TPU's
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO
    temporaries (18.02G) exceeds available HBM (15.75G)"; None for any other error."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    found = re.search(r"temporaries \(([\d.]+)([KMGT]?)\)", message)
    if not found:
        return None
    scale = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}[found.group(2)]
    return int(float(found.group(1)) * scale)


def _model_name(config) -> str:
    m = config.model
    arch = ",".join(f"{f}={getattr(m, f)}" for f in ("hidden_size", "num_hidden_layers") if getattr(m, f))
    return m.preset + (f"({arch})" if arch else "")


def format_plan(p: Plan) -> str:
    """A small per-device table (GiB, or MiB for small runs) with the verdict."""
    rows = [("parameters, trainable", p.params_trainable), ("parameters, frozen", p.params_frozen),
            ("optimizer state", p.optimizer_state), ("batch", p.batch_bytes),
            ("arguments (compiled)", p.arguments), ("activations / temporaries", p.temporaries),
            ("outputs", p.outputs), ("aliased (donated state)", -p.aliased),
            ("peak = args + temps + outputs - aliased", p.peak)]
    unit, scale = ("GiB", GIB) if p.peak >= GIB / 4 else ("MiB", 1024 ** 2)
    head = (f"{p.config or p.model} [{p.mode}] mesh {p.mesh} on {p.compiled_for}; batch {p.batch}\n"
            f"{'per device':<42} {unit:>9}\n")
    body = "\n".join(f"{name:<42} {v / scale:9.3f}" for name, v in rows)
    if p.note:
        body += f"\n(the compiler stopped: {p.note}; the temporaries are its figure, the state is counted once)"
    verdict = (f"\n{p.accelerator}: {p.capacity / GIB:.3f} GiB, usable {p.usable / GIB:.3f} GiB -> "
               f"{'FITS' if p.fits else 'DOES NOT FIT'} (peak {100 * p.peak / p.capacity:.1f}% of the device)")
    return head + body + verdict


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py[:variant]).", flag_values=FLAGS,
                                lock_config=True)
flags.DEFINE_string("mesh", "", "data,fsdp,tensor sizes (one may be -1); default: the config's mesh.shape",
                    flag_values=FLAGS)
flags.DEFINE_integer("devices", 1, "number of devices of the target slice", flag_values=FLAGS)
flags.DEFINE_enum("accelerator", "h100", sorted(ACCELERATORS), "target accelerator (its memory)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 0, "train.batch_size override (queries per step); 0 = the config's",
                     flag_values=FLAGS)
flags.DEFINE_integer("cache_chunk_size", -1, "train.cache_chunk_size override; -1 = the config's", flag_values=FLAGS)
flags.DEFINE_float("headroom", DEFAULT_HEADROOM, "usable fraction of the device memory", flag_values=FLAGS)
flags.DEFINE_float("budget_gib", 0.0, "device memory override in GiB (0 = the accelerator's)", flag_values=FLAGS)
flags.DEFINE_enum("backend", "auto", ["auto", "cpu", "tpu"],
                  "auto: the TPU topology for v5e/v5p when libtpu is installed, else simulated CPU devices",
                  flag_values=FLAGS)
flags.DEFINE_string("topology", "", "libtpu topology name, e.g. v5e:2x4 (default: from --devices)", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the plan as JSON here", flag_values=FLAGS)
flags.mark_flag_as_required("config", flag_values=FLAGS)
define_help(FLAGS)


def _select_devices(f):
    """(devices, description) for the flags; configures JAX's CPU device count first."""
    want_tpu = f.backend == "tpu" or (f.backend == "auto" and f.accelerator in TPU_KINDS)
    note = ""
    if want_tpu:
        if f.accelerator not in TPU_KINDS:
            raise ValueError(f"--backend=tpu needs a TPU accelerator, not {f.accelerator}")
        topology = f.topology or tpu_topology_name(f.accelerator, f.devices)
        try:
            devices = tpu_devices(topology)
            return devices, f"TPU topology {topology} ({len(devices)} x {devices[0].device_kind}, libtpu AOT)"
        except Exception as e:  # libtpu missing or refusing: fall back to simulated CPU devices
            if f.backend == "tpu":
                raise
            note = f"; TPU AOT unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", f.devices)
    devices = jax.devices()[:f.devices]
    if len(devices) != f.devices:
        raise ValueError(f"--devices={f.devices}: only {len(devices)} CPU devices could be simulated")
    return devices, f"{f.devices} simulated CPU devices (XLA:CPU){note}"


def _command(f, argv: Sequence[str]) -> None:
    config = f.config.copy_and_resolve_references()
    if f.batch_size:
        config.train.batch_size = f.batch_size
    if f.cache_chunk_size >= 0:
        config.train.cache_chunk_size = f.cache_chunk_size
    init_from = config.model.init_from
    if init_from and not os.path.isfile(os.path.join(init_from, "config.json")) and not (
            gguf_io.is_gguf(init_from) and os.path.isfile(init_from)):
        config.model.init_from = ""  # plan from the preset
    mesh = tuple(int(x) for x in f.mesh.replace("x", ",").split(",")) if f.mesh else tuple(config.mesh.shape)
    resolve_mesh_shape(mesh, f.devices)
    _check_config(config)
    devices, where = _select_devices(f)
    budget = int(f.budget_gib * GIB) if f.budget_gib else None
    p = plan_step(config, devices=devices, mesh_shape=mesh, accelerator=f.accelerator, compiled_for=where,
                  headroom=f.headroom, budget_bytes=budget, name=_config_name(argv))
    print(format_plan(p))
    if f.output:
        os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        with open(f.output, "w") as out:
            json.dump(p.to_json(), out, indent=2)


def _check_config(config):
    """The run config checks that do not depend on data or devices."""
    saved = config.data.train_files
    config.data.train_files = saved or "(plan)"  # no data is read
    try:
        validate(config)
    finally:
        config.data.train_files = saved


def _config_name(argv: Sequence[str]) -> str:
    """The --config flag and its --config.* overrides as given."""
    return " ".join(a for a in argv[1:] if a.startswith("--config"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status (2: bad
    config, mesh or flags)."""
    argv = list(sys.argv if argv is None else argv)
    return run_cli(FLAGS, lambda f: _command(f, argv), argv, as_absl_app=True, allow_arguments=False,
                   expected_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
