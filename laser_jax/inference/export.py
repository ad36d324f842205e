"""Embed a JSONL corpus into an .npy: streaming, resumable, shardable across hosts.

  python -m laser_jax.export --model=PATH --input=FILE.jsonl --output=OUT.npy \
      [--kind=document|query|raw] [--instruction=...] [--num_thinking_steps=K] \
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
the document formatting (chat wrapping when the model uses it), `raw` none.

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

In process: `export_embeddings(encoder, input_path, output_path, ...)`, `assemble(...)`.
"""
from __future__ import annotations

import array
import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags, logging

from laser_jax.cli import run_cli

__all__ = [
    "ExportInputError", "InputIndex", "ExportResult", "scan_input", "read_records",
    "export_embeddings", "assemble", "part_paths", "main",
]

FORMAT = "laser_jax.export/1"
KINDS = ("document", "query", "raw")
DTYPES = ("float32", "float16")
BATCHES_PER_CHUNK = 256  # default chunk_size = this many batches
PROBE_TEXT = "LaSER export probe: the number 7 is the sum of 3 and 4."
PROBE_MIN_COSINE = 0.9999


class ExportInputError(ValueError):
    """The input JSONL is malformed; the message names file, line and field."""

    def __init__(self, path: str, message: str, line: Optional[int] = None, field: Optional[str] = None):
        where = path if line is None else f"{path}:{line}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")
        self.path, self.line, self.field = path, line, field


# ----------------------------------------------------------------------------- input
def _parse(path: str, lineno: int, raw: bytes) -> Tuple[str, str]:
    """(id, text) of one non-blank line, or ExportInputError."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportInputError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", lineno) from None
    try:
        record = json.loads(line.lstrip("\ufeff") if lineno == 1 else line)
    except json.JSONDecodeError as e:
        raise ExportInputError(path, f"malformed JSON ({e.msg} at column {e.colno})", lineno) from None
    if not isinstance(record, dict):
        raise ExportInputError(path, f"expected a JSON object, got {type(record).__name__}", lineno)
    if "id" not in record:
        raise ExportInputError(path, "missing", lineno, "id")
    rid = record["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise ExportInputError(path, f"expected a string id, got {type(rid).__name__}", lineno, "id")
    rid = str(rid)
    if not rid:
        raise ExportInputError(path, "empty id", lineno, "id")
    if "\n" in rid or "\r" in rid:
        raise ExportInputError(path, f"id {rid!r} contains a line break (ids files hold one id per line)",
                               lineno, "id")
    if "text" not in record:
        raise ExportInputError(path, "missing", lineno, "text")
    if not isinstance(record["text"], str):
        raise ExportInputError(path, f"expected a string, got {type(record['text']).__name__}", lineno, "text")
    return rid, record["text"]


def _id_hash(rid: str) -> int:
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "little")


@dataclasses.dataclass
class InputIndex:
    """What the first pass learnt about an input file.

    Attributes:
      path: the file.
      size, mtime_ns: its stat when scanned.
      sha256: hex digest of its bytes.
      num_records: records (non-blank lines).
      chunk_size: records per chunk.
      chunk_offsets: [C] byte offset of each chunk's first record.
      chunk_lines: [C] 1-based line number of each chunk's first record.
    """
    path: str
    size: int
    mtime_ns: int
    sha256: str
    num_records: int
    chunk_size: int
    chunk_offsets: List[int]
    chunk_lines: List[int]

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_offsets)

    def chunk_rows(self, c: int) -> Tuple[int, int]:
        """[start, stop) record rows of chunk c."""
        return c * self.chunk_size, min((c + 1) * self.chunk_size, self.num_records)

    def fingerprint(self) -> dict:
        """What identifies the input's content (not its path)."""
        return {"sha256": self.sha256, "size": self.size, "num_records": self.num_records}


def scan_input(path: str, chunk_size: int) -> InputIndex:
    """First pass: validate every line, count records, find chunk starts, hash the file.

    Memory: 8 bytes per record (a 64-bit hash of each id, for the duplicate check).

    Args:
      path: JSONL file of {"id", "text"} objects.
      chunk_size: records per chunk (>= 1).

    Returns:
      InputIndex.

    Raises:
      ExportInputError naming file, line and field of the first problem; FileNotFoundError.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: input file not found")
    stat = os.stat(path)
    digest = hashlib.sha256()
    hashes = array.array("Q")
    offsets, lines = [], []
    empty_texts, first_empty = 0, None
    pos = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            digest.update(raw)
            start, pos = pos, pos + len(raw)
            if not raw.strip():
                continue
            rid, text = _parse(path, lineno, raw)
            if len(hashes) % chunk_size == 0:
                offsets.append(start)
                lines.append(lineno)
            hashes.append(_id_hash(rid))
            if not text.strip():
                empty_texts += 1
                first_empty = first_empty or lineno
    if not hashes:
        raise ExportInputError(path, "no records (the file is empty or blank)")
    _check_duplicates(path, np.frombuffer(hashes, np.uint64))
    if empty_texts:
        logging.warning("%s: %d record(s) have an empty text (first on line %d); they are encoded "
                        "as given", path, empty_texts, first_empty)
    return InputIndex(path, stat.st_size, stat.st_mtime_ns, digest.hexdigest(), len(hashes),
                      chunk_size, offsets, lines)


def _check_duplicates(path: str, hashes: np.ndarray) -> None:
    """Raise for the first repeated id (by line); equal hashes are confirmed on the ids."""
    order = np.sort(hashes)
    suspects = set(order[1:][order[1:] == order[:-1]].tolist())
    if not suspects:
        return
    first: Dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            rid, _ = _parse(path, lineno, raw)
            if _id_hash(rid) not in suspects:
                continue
            if rid in first:
                raise ExportInputError(path, f"duplicate id {rid!r} (first on line {first[rid]})", lineno, "id")
            first[rid] = lineno


def read_records(index: InputIndex, first_chunk: int, num_chunks: int = 1) -> Iterator[Tuple[str, str]]:
    """Yield (id, text) of chunks [first_chunk, first_chunk + num_chunks), reading only those."""
    if num_chunks <= 0 or first_chunk >= index.num_chunks:
        return
    count = index.chunk_rows(min(first_chunk + num_chunks, index.num_chunks) - 1)[1] - \
        index.chunk_rows(first_chunk)[0]
    with open(index.path, "rb") as f:
        f.seek(index.chunk_offsets[first_chunk])
        lineno = index.chunk_lines[first_chunk]
        for raw in f:
            if raw.strip():
                yield _parse(index.path, lineno, raw)
                count -= 1
                if count == 0:
                    return
            lineno += 1
    raise ExportInputError(index.path, "the file became shorter while exporting")


# ------------------------------------------------------------------------ files, state
def _base(output_path: str) -> str:
    if not output_path.endswith(".npy"):
        raise ValueError(f"--output={output_path} must end with .npy")
    return output_path[:-4]


def final_paths(output_path: str) -> Dict[str, str]:
    """{"npy", "ids", "meta"}: OUT.npy, OUT.ids.txt, OUT.export.json."""
    base = _base(output_path)
    return {"npy": output_path, "ids": base + ".ids.txt", "meta": base + ".export.json"}


def part_paths(output_path: str, shard_index: int, num_shards: int) -> Dict[str, str]:
    """{"npy", "ids", "progress"} of one shard's part files beside OUT.npy."""
    stem = f"{_base(output_path)}.part-{shard_index:05d}-of-{num_shards:05d}"
    return {"npy": stem + ".npy", "ids": stem + ".ids.txt", "progress": stem + ".progress.json"}


def _write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:  # absent, or another process removed it first
            pass


def _differences(old: dict, new: dict) -> List[str]:
    """Human-readable differences between two settings dicts (the probe by cosine)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted((set(a) | set(b)) - {"name"}):
                if k == "probe":
                    if not _same_probe(a.get(k), b.get(k)):
                        out.append("model: its probe embedding differs (another model or weights)")
                elif a.get(k) != b.get(k):
                    out.append(f"model {k}: was {a.get(k)!r}, now {b.get(k)!r}")
        elif a != b:
            out.append(f"{key}: was {a!r}, now {b!r}")
    return out


def _same_probe(a, b) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)) >= PROBE_MIN_COSINE


# --------------------------------------------------------------------------- encoding
def _formatter(encoder, kind: str, instruction: str) -> Callable[[List[str]], List[str]]:
    if kind == "query":
        return lambda texts: encoder.format_queries(texts, instruction)
    if kind == "document":
        return encoder.format_documents
    if kind == "raw":
        return list
    raise ValueError(f"--kind={kind!r} must be one of {KINDS}")


def _model_signature(encoder, fmt, steps: int, max_length: int, batch_size: int,
                     name: Optional[str]) -> dict:
    """Config, text format and a probe embedding: what identifies the model's function."""
    cfg = dataclasses.asdict(encoder.cfg) if dataclasses.is_dataclass(encoder.cfg) else repr(encoder.cfg)
    (_, probe), = list(encoder.iter_batches(fmt([PROBE_TEXT]), steps, max_length, batch_size))
    return {"name": name, "config": json.loads(json.dumps(cfg, default=str)),
            "text_format": json.loads(json.dumps(dataclasses.asdict(encoder.text_format), default=str)),
            "probe": [float(x) for x in np.asarray(probe[0], np.float64)]}


@dataclasses.dataclass
class ExportResult:
    """What one export_embeddings call did.

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


def _process_info() -> Tuple[int, int]:
    import jax

    return jax.process_count(), jax.process_index()


def _barrier(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def shard_chunks(num_chunks: int, num_shards: int, shard_index: int) -> Tuple[int, int]:
    """[first, stop) chunks of one shard: contiguous, whole chunks, sizes within one."""
    return num_chunks * shard_index // num_shards, num_chunks * (shard_index + 1) // num_shards


def export_embeddings(encoder, input_path: str, output_path: str, *, kind: str = "document",
                      instruction: str = "", num_thinking_steps: Optional[int] = None,
                      max_length: int = 512, batch_size: int = 32, dtype: str = "float32",
                      chunk_size: Optional[int] = None, num_shards: Optional[int] = None,
                      shard_index: Optional[int] = None, assemble_output: Optional[bool] = None,
                      overwrite: bool = False, progress: bool = True,
                      on_chunk: Optional[Callable[[int], None]] = None, model_name: Optional[str] = None,
                      index: Optional[InputIndex] = None) -> ExportResult:
    """Embed every record of a JSONL file into OUT.npy (+ OUT.ids.txt), resumably.

    Args:
      encoder: a LaserEncoder (iter_batches, format_queries/format_documents, cfg, text_format).
      input_path: JSONL of {"id", "text"} (see the module doc).
      output_path: OUT.npy.
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
      on_chunk: called with the chunk number after each chunk is encoded and recorded.
      model_name: recorded in OUT.export.json (informational).
      index: a scan_input result for this file and chunk_size (skips the first pass).

    Returns:
      ExportResult. The rows of OUT.npy are float [N, D], L2-normalised, in input order.
    """
    if kind not in KINDS:
        raise ValueError(f"--kind={kind!r} must be one of {KINDS}")
    if kind != "query" and instruction:
        raise ValueError("--instruction applies to --kind=query only")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} must be one of {DTYPES}")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_length ({max_length}) must be >= 1")
    chunk_size = chunk_size or BATCHES_PER_CHUNK * batch_size
    by_process = num_shards is None
    if by_process:
        if shard_index is not None:
            raise ValueError("--shard_index needs --num_shards")
        num_shards, shard_index = _process_info()
    elif shard_index is None or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} must be in [0, {num_shards}) with --num_shards")
    if assemble_output is None:
        assemble_output = by_process or num_shards == 1
    steps = int(num_thinking_steps or encoder.num_thinking_steps)
    if steps < 1:
        raise ValueError(f"num_thinking_steps must be >= 1, got {steps}")
    if kind == "query" and not instruction:
        logging.warning("--kind=query without --instruction: the template gets an empty instruction")
    final = final_paths(output_path)
    part = part_paths(output_path, shard_index, num_shards)

    state = _read_json(part["progress"])
    if index is None:  # validates the whole input before anything is encoded
        index = _reuse_index(state, input_path, chunk_size) or scan_input(input_path, chunk_size)
    elif index.chunk_size != chunk_size:
        raise ValueError(f"index was scanned with chunk_size={index.chunk_size}, not {chunk_size}")
    fmt = _formatter(encoder, kind, instruction)
    model = _model_signature(encoder, fmt, steps, max_length, batch_size, model_name)
    settings = {"kind": kind, "instruction": instruction, "num_thinking_steps": steps,
                "max_length": max_length, "batch_size": batch_size, "dtype": dtype,
                "chunk_size": chunk_size, "model": model}
    dim = int(encoder.cfg.hidden_size)
    settings.update(input=index.fingerprint(), dim=dim)

    done = _finished_export(final, settings, overwrite)
    if done is not None:
        _cleanup_parts(output_path)
        return ExportResult(final["npy"], done["num_rows"], done["dim"], 0, 0, 0, True)
    _check_other_shardings(output_path, num_shards, overwrite)

    c0, c1 = shard_chunks(index.num_chunks, num_shards, shard_index)
    row0, row1 = index.chunk_rows(c0)[0], index.chunk_rows(c1 - 1)[1] if c1 > c0 else index.chunk_rows(c0)[0]
    shard = {"num_shards": num_shards, "shard_index": shard_index, "chunks": [c0, c1], "rows": [row0, row1]}
    state = _resume_or_start(part, state, settings, shard, index, overwrite)

    skipped = state["chunks_done"]
    encoded = 0
    if not state["complete"]:
        encoded = _encode_part(encoder, index, fmt, state, part, dim, steps, max_length, batch_size,
                               dtype, progress, on_chunk)
    result = ExportResult(part["npy"], row1 - row0, dim, c1 - c0, encoded, skipped, False)
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


def _resume_or_start(part: Dict[str, str], state: Optional[dict], settings: dict, shard: dict,
                     index: InputIndex, overwrite: bool) -> dict:
    """This shard's progress: the saved one when it matches, else a fresh one (or refuse)."""
    if state is not None and state.get("format") == FORMAT:
        diff = _differences(state["settings"], settings) + _differences(state["shard"], shard)
        if not diff:
            state["index"].update(path=os.path.abspath(index.path), size=index.size, mtime_ns=index.mtime_ns)
            return state
        if not overwrite:
            raise ValueError(f"{part['progress']}: an unfinished export with other settings is there "
                             f"({'; '.join(diff)}); rerun with the same arguments to resume it, or pass "
                             "--overwrite to start over")
    elif state is not None and not overwrite:
        raise ValueError(f"{part['progress']}: not a laser_jax export progress file; pass --overwrite")
    _remove(part["npy"], part["ids"], part["progress"])
    state = {"format": FORMAT, "settings": settings, "shard": shard,
             "index": {"path": os.path.abspath(index.path), "size": index.size, "mtime_ns": index.mtime_ns,
                       "chunk_offsets": index.chunk_offsets, "chunk_lines": index.chunk_lines},
             "chunks_done": 0, "complete": False, "finalizing": False}
    _write_json_atomic(part["progress"], state)
    return state


def _reuse_index(state: Optional[dict], input_path: str, chunk_size: int) -> Optional[InputIndex]:
    """The progress file's scan when the input's path, size and mtime are unchanged."""
    if not state or state.get("format") != FORMAT or state["settings"].get("chunk_size") != chunk_size:
        return None
    fp, saved = state["settings"]["input"], state["index"]
    if not os.path.isfile(input_path) or saved.get("path") != os.path.abspath(input_path):
        return None
    stat = os.stat(input_path)
    if (stat.st_size, stat.st_mtime_ns) != (saved["size"], saved["mtime_ns"]):
        return None
    return InputIndex(input_path, saved["size"], saved["mtime_ns"], fp["sha256"], fp["num_records"],
                      chunk_size, saved["chunk_offsets"], saved["chunk_lines"])


def _finished_export(final: Dict[str, str], settings: dict, overwrite: bool) -> Optional[dict]:
    """The OUT.export.json of a complete export with these settings, else None (or refuse)."""
    meta = _read_json(final["meta"])
    if meta is not None and all(os.path.exists(final[k]) for k in ("npy", "ids")):
        diff = _differences(meta.get("settings", {}), settings)
        if not diff:
            logging.info("%s: already complete with these settings", final["npy"])
            return meta
        if not overwrite:
            raise ValueError(f"{final['npy']} holds a finished export with other settings "
                             f"({'; '.join(diff)}); pass --overwrite to replace it")
    elif os.path.exists(final["npy"]) and not overwrite and not glob.glob(
            glob.escape(_base(final["npy"])) + ".part-*.progress.json"):
        raise ValueError(f"{final['npy']} exists and was not written by laser_jax.export "
                         f"(no {os.path.basename(final['meta'])}); pass --overwrite to replace it")
    return None


def _check_other_shardings(output_path: str, num_shards: int, overwrite: bool) -> None:
    pattern = re.compile(r"\.part-\d{5}-of-(\d{5})\.progress\.json$")
    stale = [p for p in glob.glob(glob.escape(_base(output_path)) + ".part-*-of-*.progress.json")
             if (m := pattern.search(p)) and int(m.group(1)) != num_shards]
    if stale and not overwrite:
        raise ValueError(f"progress files of an export with another number of shards are there "
                         f"({', '.join(sorted(stale)[:3])}); finish that export, or pass --overwrite")
    for p in stale:
        stem = p[:-len(".progress.json")]
        _remove(p, stem + ".npy", stem + ".ids.txt")


def _encode_part(encoder, index: InputIndex, fmt, state: dict, part: Dict[str, str], dim: int,
                 steps: int, max_length: int, batch_size: int, dtype: str, progress: bool,
                 on_chunk) -> int:
    """Encode this shard's unfinished chunks into its memory-mapped part file."""
    from tqdm import tqdm

    (c0, c1), (row0, row1) = state["shard"]["chunks"], state["shard"]["rows"]
    shape = (row1 - row0, dim)
    if state["chunks_done"] == 0:
        rows = np.lib.format.open_memmap(part["npy"], mode="w+", dtype=np.dtype(dtype), shape=shape)
    else:
        if not os.path.exists(part["npy"]):
            raise ValueError(f"{part['progress']} records {state['chunks_done']} finished chunk(s) but "
                             f"{part['npy']} is missing; pass --overwrite to start over")
        rows = np.lib.format.open_memmap(part["npy"], mode="r+")
        if rows.shape != shape or rows.dtype != np.dtype(dtype):
            raise ValueError(f"{part['npy']}: shape {rows.shape} {rows.dtype}, expected {shape} {dtype}; "
                             "pass --overwrite to start over")
    done_rows = index.chunk_rows(c0 + state["chunks_done"])[0] - row0 if c1 > c0 else 0
    settings = state["settings"]
    bar = tqdm(total=row1 - row0, initial=done_rows, unit="doc", disable=not progress, dynamic_ncols=True,
               desc=f"export {settings['kind']} {state['shard']['shard_index'] + 1}/{state['shard']['num_shards']}")
    encoded = 0
    try:
        for c in range(c0 + state["chunks_done"], c1):
            start, _ = index.chunk_rows(c)
            texts = [text for _, text in read_records(index, c)]
            for idx, emb in encoder.iter_batches(fmt(texts), steps, max_length, batch_size):
                rows[start - row0 + idx] = emb.astype(dtype)
                bar.update(len(idx))
            rows.flush()
            state["chunks_done"] += 1
            _write_json_atomic(part["progress"], state)
            encoded += 1
            if on_chunk is not None:
                on_chunk(c)
    finally:
        bar.close()
        del rows
    tmp = part["ids"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rid, _ in read_records(index, c0, c1 - c0):
            f.write(rid + "\n")
    os.replace(tmp, part["ids"])
    state["complete"] = True
    _write_json_atomic(part["progress"], state)
    return encoded


# --------------------------------------------------------------------------- assembly
def assemble(output_path: str, num_shards: int, block_rows: int = 65536) -> str:
    """Join finished part files into OUT.npy, OUT.ids.txt and OUT.export.json.

    Checks that every part is complete, made with the same settings and input, and that
    the parts cover the rows in order. A single part is renamed (no copy); several are
    copied block by block (flat memory). Part files are removed afterwards.

    Args:
      output_path: OUT.npy.
      num_shards: N, the number of parts.
      block_rows: rows copied at a time.

    Returns:
      output_path.
    """
    final = final_paths(output_path)
    parts = [part_paths(output_path, i, num_shards) for i in range(num_shards)]
    states = []
    for i, p in enumerate(parts):
        state = _read_json(p["progress"])
        if state is None:
            meta = _read_json(final["meta"])
            if meta is not None and meta.get("num_shards") == num_shards and os.path.exists(final["npy"]):
                logging.info("%s: already assembled", output_path)
                return output_path
            raise ValueError(f"{p['progress']}: missing: shard {i} of {num_shards} has not run "
                             "(or was run with another --output / --num_shards)")
        if not state.get("complete"):
            raise ValueError(f"{p['progress']}: shard {i} of {num_shards} is unfinished "
                             f"({state.get('chunks_done')} chunk(s) done); run it again to finish it")
        states.append(state)
    for i, state in enumerate(states[1:], 1):
        diff = _differences(states[0]["settings"], state["settings"])
        if diff:
            raise ValueError(f"{parts[i]['progress']}: made with other settings than shard 0: {'; '.join(diff)}")
    expected = 0
    for i, state in enumerate(states):
        r0, r1 = state["shard"]["rows"]
        if r0 != expected or state["shard"]["num_shards"] != num_shards:
            raise ValueError(f"{parts[i]['progress']}: covers rows [{r0}, {r1}), expected to start at {expected}")
        expected = r1
    settings = states[0]["settings"]
    if expected != settings["input"]["num_records"]:
        raise ValueError(f"the parts cover {expected} rows, the input has {settings['input']['num_records']}")

    if num_shards == 1:
        _finalize_single(parts[0], states[0], final)
    else:
        _copy_parts(parts, states, final, settings, block_rows)
    arr = np.load(final["npy"], mmap_mode="r")
    meta = {"format": FORMAT, "settings": settings, "num_rows": int(arr.shape[0]), "dim": int(arr.shape[1]),
            "num_shards": num_shards}
    del arr
    _write_json_atomic(final["meta"], meta)
    for p in parts:
        _remove(p["npy"], p["ids"], p["progress"])
    logging.info("wrote %s and %s", final["npy"], final["ids"])
    return output_path


def _finalize_single(part: Dict[str, str], state: dict, final: Dict[str, str]) -> None:
    """Rename the single part into place; resumable (the progress file says 'finalizing')."""
    _remove(final["meta"])
    if not state.get("finalizing"):
        state["finalizing"] = True
        _write_json_atomic(part["progress"], state)
    for key in ("ids", "npy"):
        if os.path.exists(part[key]):
            os.replace(part[key], final[key])
        elif not os.path.exists(final[key]):
            raise ValueError(f"{part[key]} is missing; pass --overwrite to start over")


def _copy_parts(parts, states, final, settings, block_rows: int) -> None:
    _remove(final["meta"])
    dim = settings["dim"]
    tmp_npy = _base(final["npy"]) + ".assembling.npy"
    out = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.dtype(settings["dtype"]),
                                    shape=(settings["input"]["num_records"], dim))
    for p, state in zip(parts, states):
        src = np.load(p["npy"], mmap_mode="r")
        r0 = state["shard"]["rows"][0]
        for s in range(0, src.shape[0], block_rows):
            block = src[s:s + block_rows]
            out[r0 + s:r0 + s + len(block)] = block
        del src
    out.flush()
    del out
    tmp_ids = final["ids"] + ".tmp"
    with open(tmp_ids, "wb") as f:
        for p in parts:
            with open(p["ids"], "rb") as src:
                while block := src.read(1 << 20):
                    f.write(block)
    os.replace(tmp_npy, final["npy"])
    os.replace(tmp_ids, final["ids"])


def _cleanup_parts(output_path: str) -> None:
    for p in glob.glob(glob.escape(_base(output_path)) + ".part-*-of-*.*"):
        if re.search(r"\.part-\d{5}-of-\d{5}\.(npy|ids\.txt|progress\.json)$", p):
            _remove(p)


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
flags.DEFINE_integer("max_length", 512, "Max tokens per text (right truncation).", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", DTYPES, "dtype of the written rows.", flag_values=FLAGS)
flags.DEFINE_enum("model_dtype", None, ["float32", "bfloat16", "float16"], "Parameter/compute dtype "
                  "(default: float32 on CPU, bfloat16 on accelerators).", flag_values=FLAGS)
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
    _base(f.output)
    if f.assemble:
        if f.num_shards is None or f.model or f.input:
            raise ValueError("--assemble takes --output and --num_shards only")
        assemble(f.output, f.num_shards)
        meta = _read_json(final_paths(f.output)["meta"])
        return ExportResult(f.output, meta["num_rows"], meta["dim"], 0, 0, 0, True)
    if not f.model or not f.input:
        raise ValueError("--model and --input are required (or --assemble)")
    if f.kind != "query" and f.instruction:
        raise ValueError("--instruction applies to --kind=query only")
    chunk_size = f.chunk_size or BATCHES_PER_CHUNK * f.batch_size
    if f.num_shards is None:  # one shard per JAX process: join the cluster first
        from laser_jax import distributed

        distributed.maybe_initialize(f.distributed)
        num_shards, shard_index = _process_info()
    else:
        num_shards, shard_index = f.num_shards, f.shard_index
    # Validate the input before loading the model (a restart reuses its recorded scan).
    state = None
    if shard_index is not None and 0 <= shard_index < num_shards:
        state = _read_json(part_paths(f.output, shard_index, num_shards)["progress"])
    index = _reuse_index(state, f.input, chunk_size) or scan_input(f.input, chunk_size)
    logging.info("%s: %d records in %d chunk(s)", f.input, index.num_records, index.num_chunks)
    from laser_jax.inference.encoder import LaserEncoder

    encoder = LaserEncoder.from_pretrained(f.model, dtype=f.model_dtype)
    return export_embeddings(
        encoder, f.input, f.output, kind=f.kind, instruction=f.instruction,
        num_thinking_steps=f.num_thinking_steps, max_length=f.max_length, batch_size=f.batch_size,
        dtype=f.dtype, chunk_size=chunk_size, num_shards=f.num_shards, shard_index=f.shard_index,
        overwrite=f.overwrite, progress=f.progress, model_name=os.path.abspath(f.model), index=index)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, lambda f: run(f).output_path, argv)


if __name__ == "__main__":
    sys.exit(main())
