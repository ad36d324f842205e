"""Reading JSONL (one JSON value per line): the one path for every JSONL input.

Training records (`laser_jax.data.jsonl_source`), export's input
(`laser_jax.inference.export_input`), BRIGHT's queries and documents
(`laser_jax.retrieval.bright`) and the gold reasoning of `experiments.explicit_upper` all
read their lines and check their fields here, and every problem is a
`laser_jax.data.errors.DataError` naming the file, the line and the field.

- `lines(fh)`: the raw lines of a binary file with 1-based numbers and byte offsets (so
  a reader can come back to a line with seek); blank lines are yielded too (`.blank`).
- `decode_json_bytes(data)`: UTF-8 JSON bytes -> the value, or a `DecodeFailure` saying
  why not (the bad byte, the JSON column); ArrayRecord entries are decoded with it too.
- `decode_line(line)`: the same for a line (a UTF-8 byte order mark on line 1 is dropped).
- `parse_object(path, line)`: a line's JSON object, or `DataError`.
- `read_objects(path)`: (line number, object) for each non-blank line.
- `get_id`, `get_text`, `get_id_list`: typed fields of an object, or `DataError`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, BinaryIO, Iterator, List, NamedTuple, Tuple, Union

from laser_jax.data.errors import DataError

BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class DecodeFailure:
    """A raw entry that is not valid UTF-8 / JSON; `message` says why."""

    message: str


# A decoded raw entry, or the message saying why it could not be decoded.
Decoded = Union[Any, DecodeFailure]


class Line(NamedTuple):
    """One raw line of a file: 1-based `number`, byte `offset` of its start, its bytes."""

    number: int
    offset: int
    raw: bytes

    @property
    def blank(self) -> bool:
        return not self.raw.strip()


def lines(fh: BinaryIO, first_number: int = 1, offset: int = 0) -> Iterator[Line]:
    """Every line of an open binary file, blank ones included.

    Args:
      fh: the file, opened "rb" and positioned at the start of a line.
      first_number: the line number of that line (1 at the start of the file).
      offset: its byte offset.
    """
    for number, raw in enumerate(fh, first_number):
        yield Line(number, offset, raw)
        offset += len(raw)


def decode_json_bytes(data: bytes) -> Decoded:
    """Decode UTF-8 JSON bytes.

    Args:
      data: the raw bytes of one record (a JSONL line or an ArrayRecord entry).

    Returns:
      The decoded JSON value, or a `DecodeFailure` naming the bad byte / JSON position.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return DecodeFailure(f"not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset "
                             f"{e.start} ({e.reason})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return DecodeFailure(f"malformed JSON: {e.msg} at column {e.colno}")


def decode_line(line: Line) -> Decoded:
    """The JSON value of a non-blank line (or a `DecodeFailure`); line 1 may start with a BOM."""
    data = line.raw[len(BOM):] if line.number == 1 and line.raw.startswith(BOM) else line.raw
    return decode_json_bytes(data)


def parse_object(path: str, line: Line) -> dict:
    """The JSON object on a non-blank line.

    Raises:
      DataError: "PATH:LINE: not valid UTF-8 / malformed JSON / expected a JSON object".
    """
    value = decode_line(line)
    if isinstance(value, DecodeFailure):
        raise DataError.at(path, value.message, line.number)
    if not isinstance(value, dict):
        raise DataError.at(path, f"expected a JSON object, got {type(value).__name__}", line.number)
    return value


def read_objects(path: str) -> Iterator[Tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file, in file order.

    Raises:
      DataError: at the first line that is not a JSON object, or when the file has no
        record; OSError (FileNotFoundError) when it cannot be opened.
    """
    count = 0
    with open(path, "rb") as fh:
        for line in lines(fh):
            if not line.blank:
                count += 1
                yield line.number, parse_object(path, line)
    if count == 0:
        raise DataError.at(path, "file is empty (no records)")


def get_id(path: str, line: int, record: dict, field: str) -> str:
    """An id field: a non-empty string (an integer is taken as its decimal string)."""
    if field not in record:
        raise DataError.at(path, "missing", line, field)
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError.at(path, f"expected a string id, got {type(value).__name__}", line, field)
    value = str(value)
    if not value:
        raise DataError.at(path, "empty id", line, field)
    return value


def get_text(path: str, line: int, record: dict, field: str) -> str:
    """A string field (may be empty)."""
    if field not in record:
        raise DataError.at(path, "missing", line, field)
    if not isinstance(record[field], str):
        raise DataError.at(path, f"expected a string, got {type(record[field]).__name__}", line, field)
    return record[field]


def get_id_list(path: str, line: int, record: dict, field: str, required: bool) -> List[str]:
    """A list of ids (strings or integers, as strings); [] when absent and not required."""
    if field not in record:
        if required:
            raise DataError.at(path, "missing", line, field)
        return []
    value = record[field]
    if not isinstance(value, list):
        raise DataError.at(path, f"expected a list of ids, got {type(value).__name__}", line, field)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise DataError.at(path, f"expected string ids, got {item!r}", line, field)
    return [str(item) for item in value]
