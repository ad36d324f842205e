"""The files of `laser_jax.export` beside OUT.npy: part files, progress, assembly.

  OUT.part-I-of-N.npy            shard I's rows (memory-mapped, pre-sized by the first pass)
  OUT.part-I-of-N.ids.txt        its ids, written when the shard is complete
  OUT.part-I-of-N.progress.json  its settings, chunk range, input scan and chunks done,
                                 replaced atomically after each chunk
  OUT.npy, OUT.ids.txt           the assembled result
  OUT.export.json                what was exported (settings, input fingerprint, model probe)
                                 and the size / sha256 of OUT.npy and OUT.ids.txt: the export's
                                 manifest, written last; a rerun that finds them damaged exports again
  .OUT.npy.lock                  held while an export writes (laser_jax.workdir_lock)

A progress file is reused only when its settings and shard are the same as the run's
(`differences` lists what changed); `assemble` joins complete parts.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from absl import logging

from laser_jax import storage, workdir_lock
from laser_jax.inference.export_input import InputIndex

FORMAT = "laser_jax.export/1"
PROBE_MIN_COSINE = 0.9999  # a probe embedding this close (cosine) is the same model


# ------------------------------------------------------------------------------ paths, files
def output_base(output_path: str) -> str:
    """OUT of OUT.npy (ValueError when the path does not end with .npy)."""
    if not output_path.endswith(".npy"):
        raise ValueError(f"--output={output_path} must end with .npy")
    return output_path[:-4]


def final_paths(output_path: str) -> Dict[str, str]:
    """{"npy", "ids", "meta"}: OUT.npy, OUT.ids.txt, OUT.export.json."""
    base = output_base(output_path)
    return {"npy": output_path, "ids": base + ".ids.txt", "meta": base + ".export.json"}


def part_paths(output_path: str, shard_index: int, num_shards: int) -> Dict[str, str]:
    """{"npy", "ids", "progress"} of one shard's part files beside OUT.npy."""
    stem = f"{output_base(output_path)}.part-{shard_index:05d}-of-{num_shards:05d}"
    return {"npy": stem + ".npy", "ids": stem + ".ids.txt", "progress": stem + ".progress.json"}


def output_lock(output_path: str, num_shards: Optional[int] = None, shard_index: int = 0):
    """The lock of an export's output (laser_jax.workdir_lock, issue 24), beside it: OUT.npy
    for a whole export or an assembly (held by process 0 of a multi-process export), the
    shard's part for an independent shard job (--num_shards)."""
    target = output_path if num_shards is None else part_paths(output_path, shard_index, num_shards)["npy"]
    return workdir_lock.held(target, "--output", inside=False)


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    """The JSON in `path`, None when there is none (a damaged one: storage.DamagedFileError)."""
    if not os.path.exists(path):
        return None
    return storage.read_json(path)


def remove_files(*paths: str) -> None:
    for p in paths:
        try:
            os.remove(p)
        except FileNotFoundError:  # absent, or another process removed it first
            pass


def differences(old: dict, new: dict) -> List[str]:
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


# ---------------------------------------------------------------------- progress, resuming
def resume_or_start(part: Dict[str, str], state: Optional[dict], settings: dict, shard: dict,
                    index: InputIndex, overwrite: bool) -> dict:
    """This shard's progress: the saved one when it matches, else a fresh one (or refuse)."""
    if state is not None and state.get("format") == FORMAT:
        diff = differences(state["settings"], settings) + differences(state["shard"], shard)
        if not diff:
            state["index"].update(path=os.path.abspath(index.path), size=index.size, mtime_ns=index.mtime_ns)
            return state
        if not overwrite:
            raise ValueError(f"{part['progress']}: an unfinished export with other settings is there "
                             f"({'; '.join(diff)}); rerun with the same arguments to resume it, or pass "
                             "--overwrite to start over")
    elif state is not None and not overwrite:
        raise ValueError(f"{part['progress']}: not a laser_jax export progress file; pass --overwrite")
    remove_files(part["npy"], part["ids"], part["progress"])
    state = {"format": FORMAT, "settings": settings, "shard": shard,
             "index": {"path": os.path.abspath(index.path), "size": index.size, "mtime_ns": index.mtime_ns,
                       "chunk_offsets": index.chunk_offsets, "chunk_lines": index.chunk_lines},
             "chunks_done": 0, "complete": False, "finalizing": False}
    write_json_atomic(part["progress"], state)
    return state


def reuse_index(state: Optional[dict], input_path: str, chunk_size: int) -> Optional[InputIndex]:
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


def finished_export(final: Dict[str, str], settings: dict, overwrite: bool) -> Optional[dict]:
    """The OUT.export.json of a complete export with these settings, else None (or refuse);
    a finished export whose files are damaged is removed (with a warning per file) and done again."""
    meta = _intact_meta(final)
    if meta is not None and all(os.path.exists(final[k]) for k in ("npy", "ids")):
        diff = differences(meta.get("settings", {}), settings)
        if not diff:
            logging.info("%s: already complete with these settings", final["npy"])
            return meta
        if not overwrite:
            raise ValueError(f"{final['npy']} holds a finished export with other settings "
                             f"({'; '.join(diff)}); pass --overwrite to replace it")
    elif os.path.exists(final["npy"]) and not overwrite and not glob.glob(
            glob.escape(output_base(final["npy"])) + ".part-*.progress.json"):
        raise ValueError(f"{final['npy']} exists and was not written by laser_jax.export "
                         f"(no {os.path.basename(final['meta'])}); pass --overwrite to replace it")
    return None


def _intact_meta(final: Dict[str, str]) -> Optional[dict]:
    """OUT.export.json, or None when there is none or it or a file it lists is damaged
    (then the export's files are removed: the export writes them again)."""
    try:
        meta = read_json(final["meta"])
        damaged = [f"{os.path.join(os.path.dirname(final['npy']), name)}: damaged ({what})" for name, want in
                   (meta or {}).get("files", {}).items()
                   if (what := storage.verify_manifest_entry(os.path.join(os.path.dirname(final["npy"]), name), want))]
    except storage.DamagedFileError as e:
        damaged, meta = [str(e)], None
    for line in damaged:
        logging.warning("%s; exporting again", line)
    if damaged:
        remove_files(final["npy"], final["ids"], final["meta"])
        return None
    return meta


def check_other_shardings(output_path: str, num_shards: int, overwrite: bool) -> None:
    pattern = re.compile(r"\.part-\d{5}-of-(\d{5})\.progress\.json$")
    stale = [p for p in glob.glob(glob.escape(output_base(output_path)) + ".part-*-of-*.progress.json")
             if (m := pattern.search(p)) and int(m.group(1)) != num_shards]
    if stale and not overwrite:
        raise ValueError(f"progress files of an export with another number of shards are there "
                         f"({', '.join(sorted(stale)[:3])}); finish that export, or pass --overwrite")
    for p in stale:
        stem = p[:-len(".progress.json")]
        remove_files(p, stem + ".npy", stem + ".ids.txt")


def write_ids(path: str, ids: Iterable[str]) -> None:
    """One id per line, written to PATH.tmp and renamed into place."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rid in ids:
            f.write(rid + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------- assembly
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
        state = read_json(p["progress"])
        if state is None:
            meta = read_json(final["meta"])
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
        diff = differences(states[0]["settings"], state["settings"])
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
            "num_shards": num_shards,  # issue 27: the files as written (this file is the export's manifest)
            "files": {os.path.basename(final[k]): storage.manifest_entry(final[k]) for k in ("npy", "ids")}}
    del arr
    write_json_atomic(final["meta"], meta)
    for p in parts:
        remove_files(p["npy"], p["ids"], p["progress"])
    logging.info("wrote %s and %s", final["npy"], final["ids"])
    return output_path


def _finalize_single(part: Dict[str, str], state: dict, final: Dict[str, str]) -> None:
    """Rename the single part into place; resumable (the progress file says 'finalizing')."""
    remove_files(final["meta"])
    if not state.get("finalizing"):
        state["finalizing"] = True
        write_json_atomic(part["progress"], state)
    for key in ("ids", "npy"):
        if os.path.exists(part[key]):
            os.replace(part[key], final[key])
        elif not os.path.exists(final[key]):
            raise ValueError(f"{part[key]} is missing; pass --overwrite to start over")


def _copy_parts(parts, states, final, settings, block_rows: int) -> None:
    remove_files(final["meta"])
    dim = settings["dim"]
    tmp_npy = output_base(final["npy"]) + ".assembling.npy"
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


def cleanup_parts(output_path: str) -> None:
    for p in glob.glob(glob.escape(output_base(output_path)) + ".part-*-of-*.*"):
        if re.search(r"\.part-\d{5}-of-\d{5}\.(npy|ids\.txt|progress\.json)$", p):
            remove_files(p)


# ----------------------------------------------------------------------------- shards
def shard_chunks(num_chunks: int, num_shards: int, shard_index: int) -> Tuple[int, int]:
    """[first, stop) chunks of one shard: contiguous, whole chunks, sizes within one."""
    return num_chunks * shard_index // num_shards, num_chunks * (shard_index + 1) // num_shards


def shard_range(index: InputIndex, num_shards: int, shard_index: int) -> dict:
    """This shard's chunk and row ranges, as recorded in its progress file."""
    c0, c1 = shard_chunks(index.num_chunks, num_shards, shard_index)
    row0 = index.chunk_rows(c0)[0]
    row1 = index.chunk_rows(c1 - 1)[1] if c1 > c0 else row0
    return {"num_shards": num_shards, "shard_index": shard_index, "chunks": [c0, c1], "rows": [row0, row1]}
