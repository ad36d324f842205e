"""Error types of the data layer.

Every data problem is described by a `Problem` that names where it is (file, line / row /
record) and which field is wrong, so a user can fix the input without a debugger. It is
raised as ONE error type, `DataError`, two ways: a loader that checks a whole input (the
training records) collects every problem and raises one `DataError` listing them; a
reader that stops at the first problem (export's input, BRIGHT files, gold reasoning)
raises `DataError.at(file, message, line=..., field=...)`, whose message is that problem
alone: "FILE:LINE: field 'F': MESSAGE".
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

# How many problems a `DataError` message lists before summarising the rest.
MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad thing found in the input.

    Attributes:
      source: the file or directory the problem is in.
      location: where inside it, e.g. "line 12", "row 3", "record 7"; "" for the whole file.
      field: the record field concerned (e.g. "query", "positive_passages[2].text"), or None.
      message: what is wrong.
      line: the 1-based line number, for problems written "FILE:LINE: ..." (then location
        is usually ""); None otherwise.
    """

    source: str
    location: str
    field: Optional[str]
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        parts = [self.source if self.line is None else f"{self.source}:{self.line}"]
        if self.location:
            parts.append(self.location)
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join(parts) + f": {self.message}"


def format_problems(problems: Sequence[Problem], limit: int = MAX_LISTED) -> str:
    """One line per problem, at most `limit` of them, then a count of the rest.

    Args:
      problems: the problems to list.
      limit: how many to list.

    Returns:
      A multi-line string (lines start with "  - ").
    """
    lines = [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more problem(s) not listed")
    return "\n".join(lines)


class DataError(ValueError):
    """Bad input data. `problems` holds every `Problem` found (the message lists <= 20).

    Args:
      problems: what is wrong.
      header: the message's first line, above the listed problems; None for
        "N problem(s) in the training data (FILES)"; "" for no header and no list: the
        message is then the problems themselves, one per line (see `at`).
    """

    def __init__(self, problems: Sequence[Problem], header: Optional[str] = None):
        self.problems = tuple(problems)
        sources = sorted({p.source for p in self.problems})
        if header is None:
            where = ", ".join(sources) if len(sources) <= 3 else f"{len(sources)} files"
            header = f"{len(self.problems)} problem(s) in the training data ({where})"
        if header:
            super().__init__(f"{header}:\n{format_problems(self.problems)}")
        else:
            super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def at(cls, source: str, message: str, line: Optional[int] = None,
           field: Optional[str] = None) -> "DataError":
        """One problem, with the message "FILE:LINE: field 'F': MESSAGE" (just "FILE: MESSAGE"
        for a problem of the whole file)."""
        return cls([Problem(source, "", field, message, line)], header="")


class ConfigError(ValueError):
    """A data-layer option that cannot work (bad template, batch larger than the data...)."""
