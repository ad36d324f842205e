"""ReasonEmb training records: the `Record` type, validation of one raw record, and
`open_records`, which picks the right source for a path.

A raw record (spec section 6) is a mapping with
  query               str, not empty
  prompt              str, the instruction (may be empty)
  reasoning_query     str, the chain of thought (`reasoning_path` is accepted instead)
  positive_passages   list, at least one passage
  negative_passages   list, at least one passage when group_size > 1
A passage is a str or, as Tevatron writes them, an object with a `text` str and an
optional `title` str; it is normalised to `"{title} {text}".strip()` (Tevatron's
formatting) or to `text` when there is no (or an empty) title.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

REASONING_FIELDS = ("reasoning_query", "reasoning_path")


@dataclasses.dataclass(frozen=True)
class Record:
    """One validated training example (all passages normalised to str).

    Attributes:
      query: the raw query text.
      prompt: the instruction filled into the query template.
      reasoning: the reasoning text ("" when the record has none and reasoning is optional).
      positives: relevant passages, at least one.
      negatives: hard negative passages (may be empty when group_size == 1).
    """

    query: str
    prompt: str
    reasoning: str
    positives: Tuple[str, ...]
    negatives: Tuple[str, ...]

    def to_json(self) -> dict:
        """The record in ReasonEmb form (passages as plain strings)."""
        return {"query": self.query, "prompt": self.prompt, "reasoning_query": self.reasoning,
                "positive_passages": list(self.positives),
                "negative_passages": list(self.negatives)}


FieldProblem = Tuple[str, str]  # (field, message)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string_field(obj: dict, name: str, problems: List[FieldProblem],
                  non_empty: bool = False) -> Optional[str]:
    if name not in obj:
        problems.append((name, "missing"))
        return None
    value = obj[name]
    if not isinstance(value, str):
        problems.append((name, f"expected a string, got {_type_name(value)}"))
        return None
    if non_empty and not value.strip():
        problems.append((name, "is empty"))
        return None
    return value


def normalise_passage(value: Any) -> Tuple[Optional[str], Optional[FieldProblem]]:
    """Turn one passage (str or {'text', 'title'?}) into a str.

    Args:
      value: the raw passage.

    Returns:
      (text, None) on success, else (None, (sub_field, message)) where sub_field is ""
      or ".text" / ".title" relative to the passage.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        if "text" not in value:
            return None, ("", "passage object has no 'text' field")
        body, title = value["text"], value.get("title")
        if not isinstance(body, str):
            return None, (".text", f"expected a string, got {_type_name(body)}")
        if title is not None and not isinstance(title, str):
            return None, (".title", f"expected a string, got {_type_name(title)}")
        text = f"{title} {body}".strip() if title else body
    else:
        return None, ("", f"expected a string or an object with 'text', got {_type_name(value)}")
    if not text.strip():
        return None, ("", "empty passage")
    return text, None


def _passages(obj: dict, name: str, problems: List[FieldProblem]) -> Optional[Tuple[str, ...]]:
    if name not in obj:
        problems.append((name, "missing"))
        return None
    value = obj[name]
    if not isinstance(value, (list, tuple)):
        problems.append((name, f"expected a list, got {_type_name(value)}"))
        return None
    out = []
    for k, item in enumerate(value):
        text, problem = normalise_passage(item)
        if problem is not None:
            problems.append((f"{name}[{k}]{problem[0]}", problem[1]))
        else:
            out.append(text)
    return tuple(out) if len(out) == len(value) else None


def parse_record(obj: Any, group_size: int = 1, require_reasoning: bool = True
                 ) -> Tuple[Optional[Record], List[FieldProblem]]:
    """Validate one raw record and build a `Record`.

    Args:
      obj: the decoded JSON value (or an Arrow row as a dict).
      group_size: documents per query G; G > 1 needs at least one negative.
      require_reasoning: if True a record without `reasoning_query`/`reasoning_path` is
        an error; if False it gets reasoning "" (replaced by the query downstream).

    Returns:
      (record, []) when valid, else (None, [(field, message), ...]) listing every
      problem of the record (field "" for problems of the whole record).
    """
    if not isinstance(obj, dict):
        return None, [("", f"expected a JSON object, got {_type_name(obj)}")]
    problems: List[FieldProblem] = []
    query = _string_field(obj, "query", problems, non_empty=True)
    prompt = _string_field(obj, "prompt", problems)
    reasoning = ""
    present = [f for f in REASONING_FIELDS if obj.get(f) is not None]
    if present:
        reasoning = _string_field(obj, present[0], problems)
    elif require_reasoning:
        problems.append(("reasoning_query", "missing (neither 'reasoning_query' nor "
                                            "'reasoning_path' is given)"))
    positives = _passages(obj, "positive_passages", problems)
    negatives = _passages(obj, "negative_passages", problems)
    if positives is not None and not positives:
        problems.append(("positive_passages", "no positive passage (need at least 1)"))
    if negatives is not None and not negatives and group_size > 1:
        problems.append(("negative_passages",
                         f"no negative passage, but group_size={group_size} needs "
                         f"{group_size - 1} per query"))
    if problems:
        return None, problems
    return Record(query, prompt, reasoning, positives, negatives), []
