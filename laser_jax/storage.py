"""Files as they lie on disk: whole or damaged, for every command that reads or writes them.

Three things, used by every stage and command:

- **Reading** (`read_json`, `load_tokenizer`, `load_npy`): the one way a run's JSON files,
  tokenizer directories and .npy arrays are read. A damaged file (cut short by a crash or a
  full disk, not UTF-8, not what its name says) is a `DamagedFileError`: one line naming the
  file and what is wrong (`W/tokenizer/tokenizer.json: not valid JSON (cut short at byte
  13516?)`), which the commands print as `error: ...` with exit status 2. (Safetensors
  weights and a model's config.json are read below this module, in laser_jax/model/, which
  imports nothing outside itself; their errors name the file the same way.)
- **Manifests** (`write_manifest`, `verify_manifest`): each stage (the generated task, the LM
  stage, a training run, an export) ends by writing MANIFEST: every file it wrote with its
  size and, for files up to HASH_LIMIT bytes (or all, where the next stage reads them),
  its sha256, written last and atomically. A rerun checks the manifest before reusing the
  stage's output; a damaged file is rebuilt from what is intact (docs/faults.md) and never
  used. A subdirectory with its own manifest is another stage's and is left to it.
- **Leftovers and full disks** (`remove_leftovers`, `is_disk_full`): temporary directories of
  an interrupted run are removed by the next one; a full disk is recognised however a
  library wraps it.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
from typing import Any, Dict, List, Optional

import numpy as np
from transformers import AutoTokenizer

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "laser_jax.manifest/1"
HASH_LIMIT = 64 << 20  # files up to this size are hashed when a manifest is written and checked
_NOT_LISTED = ("corrupt_checkpoints",)  # kept-aside damage (train/checkpoint.py), not a stage's output
# How a full disk reads when a library wraps the OSError (TensorStore, Orbax, safetensors).
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "enospc")


class DamagedFileError(ValueError):
    """A file that cannot be read as what it should be; the message names it (one line)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` or anything in its cause / context chain says the disk is full
    (OSError ENOSPC / EDQUOT, or a wrapped message from TensorStore, Orbax or safetensors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ----------------------------------------------------------------------------------- reading
def read_json(path: str) -> Any:
    """The JSON value in `path`.

    Raises:
      FileNotFoundError: no such file.
      DamagedFileError: not UTF-8 or not valid JSON, naming the file and where it breaks.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFileError(f"{path}: not valid UTF-8 (byte {e.start} of {len(data)}: a damaged file?)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            raise DamagedFileError(f"{path}: empty ({len(data)} bytes), not JSON (cut short?)") from None
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):  # it stops mid-value
            raise DamagedFileError(f"{path}: not valid JSON (cut short at byte {len(data)}?)") from None
        raise DamagedFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json")


def load_tokenizer(directory: str):
    """`transformers.AutoTokenizer` of `directory`, its JSON files checked first (a damaged one
    is named; transformers' own message would not say which file).

    Raises:
      FileNotFoundError: no tokenizer files in `directory`.
      DamagedFileError: a damaged file, or files transformers cannot load (naming the directory).
    """
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(directory, n)) for n in names):
        raise FileNotFoundError(f"{directory}: no tokenizer files ({', '.join(names)}); save the tokenizer "
                                "into the model directory (tokenizer.save_pretrained)")
    for name in TOKENIZER_JSON:
        if os.path.exists(os.path.join(directory, name)):
            read_json(os.path.join(directory, name))
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        text = str(e).strip().splitlines()
        raise DamagedFileError(f"{directory}: the tokenizer cannot be loaded ({type(e).__name__}: "
                               f"{text[0] if text else ''})") from None


def load_npy(path: str, mmap_mode: Optional[str] = "r") -> np.ndarray:
    """np.load(path, mmap_mode) with errors naming the file (a cut-short file otherwise says
    only "mmap length is greater than file size")."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except ValueError as e:
        if "mmap length is greater than file size" in str(e) or "cannot reshape" in str(e):
            raise DamagedFileError(f"{path}: the file is shorter than its header says: it looks "
                                   f"truncated (an interrupted copy or export?) ({e})") from None
        raise DamagedFileError(f"{path}: not a readable .npy file ({e})") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DamagedFileError(f"{path}: not a readable .npy file ({e})") from None


# --------------------------------------------------------------------------------- manifests
@dataclasses.dataclass(frozen=True)
class Damage:
    """One file of a stage that is not as its manifest says."""

    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: damaged ({self.what})"


@dataclasses.dataclass(frozen=True)
class ManifestCheck:
    """A stage directory against its manifest.

    Attributes:
      present: a manifest is there (False: the stage never finished, or is being rewritten).
      damaged: the files that are not as written (the manifest itself when it is unreadable).
      extra: what the stage recorded beside the file list (e.g. its fingerprint).
    """

    present: bool
    damaged: List[Damage]
    extra: Dict[str, Any]

    @property
    def intact(self) -> bool:
        return self.present and not self.damaged

    def damaged_under(self, directory: str) -> List[Damage]:
        prefix = os.path.join(directory, "")
        return [d for d in self.damaged if d.path.startswith(prefix)]


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listed_files(directory: str, skip=()):
    """Relative paths of the files of a stage directory (module doc: not hidden entries, the
    manifest, other stages' directories or `skip`)."""
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_LISTED
                         and os.path.normpath(os.path.join(rel_root, d)) not in skip
                         and not os.path.exists(os.path.join(root, d, MANIFEST)))
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name)).replace(os.sep, "/")
            if not name.startswith(".") and rel != MANIFEST:
                yield rel


def manifest_entry(path: str, hash_all: bool = False) -> dict:
    """{"size", "sha256"} of one file (the hash up to HASH_LIMIT bytes, or always)."""
    size = os.path.getsize(path)
    return {"size": size, **({"sha256": _sha256(path)} if hash_all or size <= HASH_LIMIT else {})}


def write_manifest(directory: str, *, extra: Optional[dict] = None, hash_all: bool = False,
                   skip=()) -> dict:
    """Write `directory`/MANIFEST (atomically, last): every file of the stage with its size and
    sha256 (files up to HASH_LIMIT bytes, or all with `hash_all`). Deterministic: the same
    files give the same bytes. Returns the manifest."""
    files = {rel: manifest_entry(os.path.join(directory, rel), hash_all) for rel in _listed_files(directory, skip)}
    manifest = {"format": MANIFEST_FORMAT, **(extra or {}), "files": files}
    write_json_atomic(os.path.join(directory, MANIFEST), manifest)
    return manifest


def write_json_atomic(path: str, obj) -> None:
    """`obj` as JSON into `path`: a temporary file, flushed to disk, renamed over it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def verify_manifest(directory: str, only=None) -> ManifestCheck:
    """Check `directory` against its manifest: sizes always, hashes where recorded.

    Args:
      directory: a stage directory.
      only: check these relative paths (or those under these directories) only.
    """
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return ManifestCheck(False, [], {})
    try:
        manifest = read_json(path)
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise DamagedFileError(f"{path}: not a laser_jax manifest")
    except (DamagedFileError, KeyError, TypeError, AttributeError) as e:
        text = str(e) if isinstance(e, DamagedFileError) else f"{path}: not a laser_jax manifest"
        return ManifestCheck(True, [Damage(path, text.split(": ", 1)[1])], {})
    damaged = []
    for rel, want in sorted(files.items()):
        if only is not None and not any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in only):
            continue
        damage = verify_manifest_entry(os.path.join(directory, rel), want)
        if damage:
            damaged.append(Damage(os.path.join(directory, rel), damage))
    return ManifestCheck(True, damaged, {k: v for k, v in manifest.items() if k not in ("files", "format")})


def verify_manifest_entry(path: str, want: dict) -> str:
    """"" when the file is as its manifest entry `want` says, else what is wrong."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing (the stage wrote it)"
    if size != want.get("size"):
        cut = ": cut short?" if size < want.get("size", 0) else ""
        return f"{size} bytes, {want.get('size')} were written{cut}"
    if "sha256" in want and _sha256(path) != want["sha256"]:
        return "its content differs from what was written (sha256)"
    return ""


def remove_manifest(directory: str) -> None:
    """Before a stage rewrites its directory: a manifest says the stage is finished as listed."""
    try:
        os.remove(os.path.join(directory, MANIFEST))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------- leftovers
def owner_tag() -> str:
    """Part of a temporary name that says which process made it (`remove_leftovers`)."""
    return f"{socket.gethostname()}-{os.getpid()}-"


def remove_leftovers(parent: str, prefix: str, *, any_owner: bool = False) -> List[str]:
    """Remove `parent`'s entries named `prefix` + owner_tag() + ... whose process is gone from
    this host (or every entry named `prefix`... with `any_owner`, for a caller that holds the
    lock of what they belong to). Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    host = socket.gethostname()
    for name in sorted(names):
        if not name.startswith(prefix):
            continue
        if not any_owner:
            owner = name[len(prefix):].rpartition("-")[0]  # HOST-PID of HOST-PID-random
            owner_host, _, pid = owner.rpartition("-")
            if owner_host != host or not pid.isdigit() or process_alive(int(pid)):
                continue
        path = os.path.join(parent, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        removed.append(path)
    return removed


def process_alive(pid) -> bool:
    """Whether process `pid` runs on this host (one of another user counts as running)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
