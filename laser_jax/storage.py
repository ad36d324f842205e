"""Recognising a full disk, for every command that writes (training checkpoints, exports)."""
from __future__ import annotations

import errno

# How a full disk reads when a library wraps the OSError (TensorStore, Orbax, safetensors).
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "enospc")


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
