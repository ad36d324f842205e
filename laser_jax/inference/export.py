"""Embed a JSONL corpus into an .npy: streaming, resumable, shardable across hosts.

  python -m laser_jax.export --model=PATH --input=FILE.jsonl --output=OUT.npy \
      [--kind=document|query|raw] [--instruction=...] [--num_thinking_steps=K] \
      [--chat_template=true|false] [--query_template=...] [--model_dtype=float16] \
      [--max_length=512] [--batch_size=32] [--dtype=float32|float16] [--chunk_size=N] \
      [--num_shards=N --shard_index=I] [--distributed=auto|on|off] [--overwrite]
  python -m laser_jax.export --output=OUT.npy --assemble --num_shards=N

Input: one JSON object per line with `id` (string; an integer is taken as its decimal
string) and `text` (string); other fields are ignored, blank lines skipped. The whole file
is validated (JSON, fields, types, duplicate ids) in a first pass before anything is
encoded; every error names the file, line and field.

Output: OUT.npy, float32 (or float16) [N, D], row i = the L2-normalised latent-view
embedding of the i-th record, in input order; OUT.ids.txt, the ids in the same order;
OUT.export.json, what was exported (settings, input fingerprint, model probe).
`--kind=query` fills the model's query template with --instruction, `document` applies
the document formatting (chat wrapping when the model uses it), `raw` none. The model's
text format is its own (checkpoint, laser.json; for a Hugging Face directory without
laser.json the one `laser_jax.inference.text_format` chooses, said on stderr);
--chat_template, --query_template and --num_thinking_steps override it.

Streaming and resuming: the input is read chunk by chunk (`--chunk_size` records; only
one chunk's texts are in memory), and rows are written into a memory-mapped part file
pre-sized by the first pass. After each chunk the rows are flushed and a small progress
file (OUT.part-I-of-N.progress.json) is replaced atomically, so a run killed at any point
and started again with the same arguments skips the finished chunks and produces the same
file as an uninterrupted run. A restart with other arguments, another input file or
another model (checked with a probe embedding) is refused; --overwrite starts over.

Sharding: records are split into N contiguous ranges of whole chunks (the same chunk grid
as a single run, so the result is identical). With jax.process_count() > 1 every process
encodes range jax.process_index() and process 0 assembles OUT.npy after a barrier (the
output directory must be shared). Independent jobs use --num_shards/--shard_index and
then one `--assemble` run.

Modules: `export_input` (the first pass over the input, reading chunks), `export_parts`
(part files, progress, assembly), this one (encoding, the command line).

In process: `run_export(encoder, input_path, output_path, ExportSettings(...))`, or with
the settings as keywords `export_embeddings(encoder, input_path, output_path, kind=...)`;
`assemble(output_path, num_shards)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from laser_jax import distributed
from laser_jax.cli import run_cli
from laser_jax.inference.encoder import LaserEncoder, check_num_thinking_steps_flag, check_positive
from laser_jax.inference.export_input import InputIndex, read_records, scan_input
from laser_jax.inference.export_parts import (
    assemble, check_other_shardings, cleanup_parts, final_paths, finished_export, output_base, output_lock,
    part_paths, shard_chunks, shard_range, read_json, resume_or_start, reuse_index, write_ids, write_json_atomic)
from laser_jax.inference.text_format import define_format_flags, format_flag_values
from laser_jax.method.views import resolve_num_thinking_steps

__all__ = [
    "ExportSettings", "ExportResult", "InputIndex", "scan_input", "read_records", "run_export",
    "export_embeddings", "assemble", "part_paths", "shard_chunks", "main",
]

KINDS = ("document", "query", "raw")
DTYPES = ("float32", "float16")
BATCHES_PER_CHUNK = 256  # default chunk_size = this many batches
PROBE_TEXT = "LaSER export probe: the number 7 is the sum of 3 and 4."


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What to export and how (the command line's flags of the same names).

    Attributes:
      kind: "document", "query" (query template with `instruction`) or "raw".
      instruction: the query instruction (kind="query" only).
      num_thinking_steps: K (default: the encoder's).
      max_length, batch_size: as in LaserEncoder.encode.
      dtype: "float32" or "float16" rows.
      chunk_size: records per chunk (the resume unit; default 256 batches).
      num_shards, shard_index: this job's range; default: one shard per JAX process.
      assemble_output: assemble OUT.npy after this shard (default: yes when sharding by
        JAX process, or with a single shard; independent shard jobs use `assemble`).
      overwrite: discard this shard's progress, or a finished export, made with other
        settings instead of refusing.
      progress: show a tqdm bar (docs/s).
      model_name: recorded in OUT.export.json (informational).
    """
    kind: str = "document"
    instruction: str = ""
    num_thinking_steps: Optional[int] = None
    max_length: int = 512
    batch_size: int = 32
    dtype: str = "float32"
    chunk_size: Optional[int] = None
    num_shards: Optional[int] = None
    shard_index: Optional[int] = None
    assemble_output: Optional[bool] = None
    overwrite: bool = False
    progress: bool = True
    model_name: Optional[str] = None

    def check(self) -> None:
        """ValueError naming the flag of the first setting that cannot work."""
        if self.kind not in KINDS:
            raise ValueError(f"--kind={self.kind!r} must be one of {KINDS}")
        if self.kind != "query" and self.instruction:
            raise ValueError("--instruction applies to --kind=query only")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype={self.dtype!r} must be one of {DTYPES}")
        if self.num_thinking_steps is not None:
            resolve_num_thinking_steps(self.num_thinking_steps, self.num_thinking_steps)
        check_positive(batch_size=self.batch_size, max_length=self.max_length, chunk_size=self.chunk_size,
                       num_shards=self.num_shards)
        if self.num_shards is None and self.shard_index is not None:
            raise ValueError("--shard_index needs --num_shards")
        if self.num_shards is not None and (self.shard_index is None or not 0 <= self.shard_index < self.num_shards):
            raise ValueError(f"--shard_index={self.shard_index} must be in [0, {self.num_shards}) with --num_shards")

    def resolved_chunk_size(self) -> int:
        return self.chunk_size if self.chunk_size is not None else BATCHES_PER_CHUNK * self.batch_size


@dataclasses.dataclass
class ExportResult:
    """What one export call did.

    Attributes:
      output_path: OUT.npy when assembled (or already complete), else this shard's part file.
      num_rows, dim: shape of that file.
      chunks: chunks of this shard; encoded: chunks encoded by this call; skipped: chunks
        found finished by an earlier run.
      assembled: whether OUT.npy is complete.
    """
    output_path: str
    num_rows: int
    dim: int
    chunks: int
    encoded: int
    skipped: int
    assembled: bool


# --------------------------------------------------------------------------- encoding
def _formatter(encoder, kind: str, instruction: str) -> Callable[[List[str]], List[str]]:
    if kind == "query":
        return lambda texts: encoder.format_queries(texts, instruction)
    if kind == "document":
        return encoder.format_documents
    return list  # "raw" (ExportSettings.check allows nothing else)


def _model_signature(encoder, fmt, steps: int, max_length: int, batch_size: int,
                     name: Optional[str]) -> dict:
    """Config, text format and a probe embedding: what identifies the model's function."""
    cfg = dataclasses.asdict(encoder.cfg) if dataclasses.is_dataclass(encoder.cfg) else repr(encoder.cfg)
    (_, probe), = list(encoder.iter_batches(fmt([PROBE_TEXT]), steps, max_length, batch_size))
    return {"name": name, "config": json.loads(json.dumps(cfg, default=str)),
            "text_format": json.loads(json.dumps(dataclasses.asdict(encoder.text_format), default=str)),
            "probe": [float(x) for x in np.asarray(probe[0], np.float64)]}


def _recorded_settings(encoder, s: ExportSettings, fmt, steps: int, chunk_size: int, index: InputIndex) -> dict:
    """The settings written to the progress file and OUT.export.json (a restart must match them)."""
    model = _model_signature(encoder, fmt, steps, s.max_length, s.batch_size, s.model_name)
    return {"kind": s.kind, "instruction": s.instruction, "num_thinking_steps": steps,
            "max_length": s.max_length, "batch_size": s.batch_size, "dtype": s.dtype,
            "chunk_size": chunk_size, "model": model, "input": index.fingerprint(),
            "dim": int(encoder.cfg.hidden_size)}


def _encode_part(encoder, index: InputIndex, fmt, state: dict, part: Dict[str, str], progress: bool,
                 on_chunk) -> int:
    """Encode this shard's unfinished chunks into its memory-mapped part file; returns how many."""
    settings = state["settings"]
    dtype, dim = settings["dtype"], settings["dim"]
    (c0, c1), (row0, row1) = state["shard"]["chunks"], state["shard"]["rows"]
    rows = _open_part(part, state, (row1 - row0, dim), dtype)
    done_rows = index.chunk_rows(c0 + state["chunks_done"])[0] - row0 if c1 > c0 else 0
    bar = tqdm(total=row1 - row0, initial=done_rows, unit="doc", disable=not progress, dynamic_ncols=True,
               desc=f"export {settings['kind']} {state['shard']['shard_index'] + 1}/{state['shard']['num_shards']}")
    encoded = 0
    try:
        for c in range(c0 + state["chunks_done"], c1):
            start, _ = index.chunk_rows(c)
            texts = [text for _, text in read_records(index, c)]
            for idx, emb in encoder.iter_batches(fmt(texts), settings["num_thinking_steps"],
                                                 settings["max_length"], settings["batch_size"]):
                rows[start - row0 + idx] = emb.astype(dtype)
                bar.update(len(idx))
            rows.flush()
            state["chunks_done"] += 1
            write_json_atomic(part["progress"], state)
            encoded += 1
            if on_chunk is not None:
                on_chunk(c)
    finally:
        bar.close()
        del rows
    write_ids(part["ids"], (rid for rid, _ in read_records(index, c0, c1 - c0)))
    state["complete"] = True
    write_json_atomic(part["progress"], state)
    return encoded


def _open_part(part: Dict[str, str], state: dict, shape: Tuple[int, int], dtype: str) -> np.ndarray:
    """The part file as a writable memory map: created, or the one an earlier run left."""
    if state["chunks_done"] == 0:
        return np.lib.format.open_memmap(part["npy"], mode="w+", dtype=np.dtype(dtype), shape=shape)
    if not os.path.exists(part["npy"]):
        raise ValueError(f"{part['progress']} records {state['chunks_done']} finished chunk(s) but "
                         f"{part['npy']} is missing; pass --overwrite to start over")
    rows = np.lib.format.open_memmap(part["npy"], mode="r+")
    if rows.shape != shape or rows.dtype != np.dtype(dtype):
        raise ValueError(f"{part['npy']}: shape {rows.shape} {rows.dtype}, expected {shape} {dtype}; "
                         "pass --overwrite to start over")
    return rows


# ----------------------------------------------------------------------------- shards
def _process_info() -> Tuple[int, int]:
    return jax.process_count(), jax.process_index()


def _barrier(name: str) -> None:
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------ export
def run_export(encoder, input_path: str, output_path: str, settings: ExportSettings, *,
               index: Optional[InputIndex] = None, on_chunk: Optional[Callable[[int], None]] = None
               ) -> ExportResult:
    """Embed every record of a JSONL file into OUT.npy (+ OUT.ids.txt), resumably.

    Args:
      encoder: a LaserEncoder (iter_batches, format_queries/format_documents, cfg, text_format,
        num_thinking_steps).
      input_path: JSONL of {"id", "text"} (see the module doc).
      output_path: OUT.npy.
      settings: what to export and how.
      index: a scan_input result for this file and chunk size (skips the first pass).
      on_chunk: called with the chunk number after each chunk is encoded and recorded.

    Returns:
      ExportResult. The rows of OUT.npy are float [N, D], L2-normalised, in input order.
    """
    settings.check()
    with output_lock(output_path, settings.num_shards, settings.shard_index or 0):  # issue 24 (nested in the CLI's)
        return _run_export(encoder, input_path, output_path, settings, index, on_chunk)


def _run_export(encoder, input_path: str, output_path: str, settings: ExportSettings, index, on_chunk):
    chunk_size = settings.resolved_chunk_size()
    by_process = settings.num_shards is None
    num_shards, shard_index = _process_info() if by_process else (settings.num_shards, settings.shard_index)
    steps = resolve_num_thinking_steps(settings.num_thinking_steps, encoder.num_thinking_steps)
    if settings.kind == "query" and not settings.instruction:
        logging.warning("--kind=query without --instruction: the template gets an empty instruction")
    final, part = final_paths(output_path), part_paths(output_path, shard_index, num_shards)

    state = read_json(part["progress"])
    if index is None:  # validates the whole input before anything is encoded
        index = reuse_index(state, input_path, chunk_size) or scan_input(input_path, chunk_size)
    elif index.chunk_size != chunk_size:
        raise ValueError(f"index was scanned with chunk_size={index.chunk_size}, not {chunk_size}")
    fmt = _formatter(encoder, settings.kind, settings.instruction)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    recorded = _recorded_settings(encoder, settings, fmt, steps, chunk_size, index)
    done = finished_export(final, recorded, settings.overwrite)
    if done is not None:
        cleanup_parts(output_path)
        return ExportResult(final["npy"], done["num_rows"], done["dim"], 0, 0, 0, True)
    check_other_shardings(output_path, num_shards, settings.overwrite)

    shard = shard_range(index, num_shards, shard_index)
    state = resume_or_start(part, state, recorded, shard, index, settings.overwrite)
    skipped, encoded = state["chunks_done"], 0
    if not state["complete"]:
        encoded = _encode_part(encoder, index, fmt, state, part, settings.progress, on_chunk)
    (c0, c1), (row0, row1) = shard["chunks"], shard["rows"]
    result = ExportResult(part["npy"], row1 - row0, recorded["dim"], c1 - c0, encoded, skipped, False)
    assemble_output = settings.assemble_output
    if assemble_output is None:
        assemble_output = by_process or num_shards == 1
    if not assemble_output:
        if num_shards > 1:
            logging.info("shard %d/%d done: %s; assemble with --assemble --num_shards=%d",
                         shard_index, num_shards, part["npy"], num_shards)
        return result
    if num_shards > 1:
        _barrier("laser_jax_export_parts")
        if shard_index == 0:
            assemble(output_path, num_shards)
        _barrier("laser_jax_export_assembled")
    else:
        assemble(output_path, 1)
    return dataclasses.replace(result, output_path=final["npy"], num_rows=index.num_records, assembled=True)


def export_embeddings(encoder, input_path: str, output_path: str, *, index: Optional[InputIndex] = None,
                      on_chunk: Optional[Callable[[int], None]] = None, **settings) -> ExportResult:
    """`run_export` with the `ExportSettings` fields given as keywords."""
    return run_export(encoder, input_path, output_path, ExportSettings(**settings), index=index,
                      on_chunk=on_chunk)


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Model for LaserEncoder.from_pretrained (HF dir, workdir, checkpoint).",
                    flag_values=FLAGS)
flags.DEFINE_string("input", None, "JSONL file, one {\"id\", \"text\"} object per line.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "OUT.npy (OUT.ids.txt and OUT.export.json are written beside it).",
                    flag_values=FLAGS)
flags.DEFINE_enum("kind", "document", KINDS, "Formatting: query template (query), document formatting "
                  "(document) or none (raw).", flag_values=FLAGS)
flags.DEFINE_string("instruction", "", "Query instruction (--kind=query).", flag_values=FLAGS)
flags.DEFINE_integer("num_thinking_steps", None, "Latent steps K (default: the model's, from laser.json "
                     "or the checkpoint; 3 when neither says).", flag_values=FLAGS)
define_format_flags(FLAGS)
flags.DEFINE_integer("max_length", 512, "Max tokens per text (right truncation).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", DTYPES, "dtype of the written rows.", flag_values=FLAGS)
flags.DEFINE_enum("model_dtype", None, ["float32", "bfloat16", "float16"], "Parameter/compute dtype "
                  "(default: float32 on CPU, bfloat16 on accelerators; the LaSER authors evaluate in "
                  "float16).", flag_values=FLAGS)
flags.DEFINE_integer("chunk_size", None, f"Records per chunk, the resume unit (default "
                     f"{BATCHES_PER_CHUNK} x batch_size).", flag_values=FLAGS)
flags.DEFINE_integer("num_shards", None, "Independent shard jobs: how many (default: one shard per "
                     "JAX process, assembled by process 0).", flag_values=FLAGS)
flags.DEFINE_integer("shard_index", None, "Independent shard jobs: this job's shard.", flag_values=FLAGS)
flags.DEFINE_boolean("assemble", False, "Only assemble the finished parts of --num_shards shard jobs.",
                     flag_values=FLAGS)
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "jax.distributed.initialize() "
                  "without --num_shards: auto = when a cluster launcher is detected.", flag_values=FLAGS)
flags.DEFINE_boolean("overwrite", False, "Start over instead of refusing when earlier progress or "
                     "output was made with other settings.", flag_values=FLAGS)
flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", flag_values=FLAGS, short_name="h")


def run(f: flags.FlagValues) -> ExportResult:
    """Runs what the parsed flags describe."""
    if not f.output:
        raise ValueError("--output is required")
    output_base(f.output)
    if f.assemble:
        if f.num_shards is None or f.model or f.input:
            raise ValueError("--assemble takes --output and --num_shards only")
        with output_lock(f.output):
            assemble(f.output, f.num_shards)
        meta = read_json(final_paths(f.output)["meta"])
        return ExportResult(f.output, meta["num_rows"], meta["dim"], 0, 0, 0, True)
    if not f.model or not f.input:
        raise ValueError("--model and --input are required (or --assemble)")
    check_num_thinking_steps_flag(f.num_thinking_steps)
    text_format = format_flag_values(f)
    settings = ExportSettings(
        kind=f.kind, instruction=f.instruction, num_thinking_steps=f.num_thinking_steps,
        max_length=f.max_length, batch_size=f.batch_size, dtype=f.dtype, chunk_size=f.chunk_size,
        num_shards=f.num_shards, shard_index=f.shard_index, overwrite=f.overwrite, progress=f.progress,
        model_name=os.path.abspath(f.model))
    settings.check()
    chunk_size = settings.resolved_chunk_size()
    if f.num_shards is None:  # one shard per JAX process: join the cluster first
        distributed.maybe_initialize(f.distributed)
        num_shards, shard_index = _process_info()
    else:
        num_shards, shard_index = f.num_shards, f.shard_index
    with output_lock(f.output, f.num_shards, shard_index):  # issue 24: one writer per output, before loading
        # Validate the input before loading the model (a restart reuses its recorded scan).
        state = read_json(part_paths(f.output, shard_index, num_shards)["progress"])
        index = reuse_index(state, f.input, chunk_size) or scan_input(f.input, chunk_size)
        logging.info("%s: %d records in %d chunk(s)", f.input, index.num_records, index.num_chunks)
        encoder = LaserEncoder.from_pretrained(f.model, dtype=f.model_dtype, **text_format)
        return run_export(encoder, f.input, f.output, settings, index=index)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, lambda f: run(f).output_path, argv)


if __name__ == "__main__":
    sys.exit(main())
