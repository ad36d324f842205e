"""Expand a path or glob into the sorted list of files it names."""
from __future__ import annotations

import glob
import os
from typing import List, Tuple

from laser_jax.data.errors import Problem

_GLOB_CHARS = "*?["


def expand_files(pattern: str) -> Tuple[List[str], List[Problem]]:
    """Files named by a path or glob pattern, in sorted order.

    Args:
      pattern: a file path, or a glob such as "data/train-*.jsonl" (`**` recurses).

    Returns:
      (files, problems): the sorted matching files, and one `Problem` if the path is
      missing or a directory, or the glob matches no file.
    """
    if any(c in pattern for c in _GLOB_CHARS):
        files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not files:
            return [], [Problem(pattern, "", None, "glob pattern matched no files")]
        return files, []
    if os.path.isdir(pattern):
        return [], [Problem(pattern, "", None, "is a directory, not a file (for a Hugging Face "
                                               "save_to_disk directory it must hold state.json "
                                               "or dataset_dict.json)")]
    if not os.path.exists(pattern):
        return [], [Problem(pattern, "", None, "no such file")]
    return [pattern], []
