"""BRIGHT-format evaluation data: loading, validation and per-domain query instructions.

A data directory holds one sub-directory per domain (or is itself one domain directory):

  DOMAIN/queries.jsonl    {"id": str, "query": str, "gold_ids": [str, ...],
                           "excluded_ids": [str, ...]}   (excluded_ids optional, default [])
  DOMAIN/documents.jsonl  {"id": str, "content": str}
  DOMAIN/instruction.txt  optional: overrides the domain's query instruction
  domains.json            optional, beside the domains: {domain: instruction}

The files are read by `laser_jax.data.jsonl`; every problem is a
`laser_jax.data.errors.DataError` naming the file, the line (1-based) and the field.
Excluded ids that name no document (BRIGHT writes "N/A") are ignored; gold ids must name
documents of the domain.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

from laser_jax.data.errors import DataError
from laser_jax.data.jsonl import get_id, get_id_list, get_text, read_objects

__all__ = [
    "BRIGHT_DOMAINS", "INSTRUCTIONS", "BrightDomain", "domain_instruction",
    "is_domain_dir", "list_domains", "load_domain", "load_bright",
]

QUERIES_FILE = "queries.jsonl"
DOCUMENTS_FILE = "documents.jsonl"
INSTRUCTION_FILE = "instruction.txt"
DOMAINS_FILE = "domains.json"  # optional, beside the domain directories: {domain: instruction}

BRIGHT_DOMAINS = (
    "biology", "earth_science", "economics", "psychology", "robotics", "stackoverflow",
    "sustainable_living", "leetcode", "pony", "aops", "theoremqa_theorems", "theoremqa_questions",
)

_POST = "Given a {} post, retrieve relevant passages that help answer the post."
_MATH_EXAMPLES = "Given a Math problem, retrieve relevant examples that help answer the problem."
# The LaSER authors' evaluation instructions (laser_spec section 7). biology and earth_science
# share "Given a post, ..."; the StackExchange domains name themselves exactly as the domain
# key is written (so "sustainable_living", with its underscore, as in the authors' table).
INSTRUCTIONS: Dict[str, str] = {
    "biology": "Given a post, retrieve relevant passages that help answer the post.",
    "earth_science": "Given a post, retrieve relevant passages that help answer the post.",
    "economics": _POST.format("economics"),
    "psychology": _POST.format("psychology"),
    "robotics": _POST.format("robotics"),
    "stackoverflow": _POST.format("stackoverflow"),
    "sustainable_living": _POST.format("sustainable_living"),
    "leetcode": "Given a coding problem, retrieve relevant examples that help answer the problem.",
    "pony": ("Given a question about pony program language, retrieve relevant passages that "
             "help answer the question."),
    "aops": _MATH_EXAMPLES,
    "theoremqa_questions": _MATH_EXAMPLES,
    "theoremqa_theorems": "Given a Math problem, retrieve relevant theorems that help answer the problem.",
}


@dataclasses.dataclass
class BrightDomain:
    """One domain: queries, documents and the query instruction (None when unknown).

    Attributes:
      name: domain name (the directory's base name).
      query_ids, queries: [Q] ids and texts, file order.
      gold_ids: [Q] lists of relevant document ids.
      excluded_ids: [Q] lists of document ids removed from each query's ranking (only ids
        that name documents are kept).
      doc_ids, documents: [N] ids and texts, file order.
      instruction: the query instruction, or None when the domain has no known one.
    """
    name: str
    query_ids: List[str]
    queries: List[str]
    gold_ids: List[List[str]]
    excluded_ids: List[List[str]]
    doc_ids: List[str]
    documents: List[str]
    instruction: Optional[str] = None

    @property
    def qrels(self) -> Dict[str, Dict[str, int]]:
        """{query id: {gold document id: 1}}."""
        return {q: {d: 1 for d in gold} for q, gold in zip(self.query_ids, self.gold_ids)}

    @property
    def excluded(self) -> Dict[str, List[str]]:
        """{query id: [excluded document ids]}."""
        return dict(zip(self.query_ids, self.excluded_ids))

    def require_instruction(self) -> str:
        """The instruction, or a clear error when the domain has none."""
        if self.instruction is None:
            raise ValueError(
                f"no query instruction for domain {self.name!r}: it is not one of BRIGHT's "
                f"domains {list(BRIGHT_DOMAINS)}; put the instruction in {INSTRUCTION_FILE} "
                "in its directory")
        return self.instruction


def domain_instruction(name: str, domain_dir: Optional[str] = None) -> Optional[str]:
    """The query instruction of a domain: DIR/instruction.txt if present, else the entry for
    the domain in the parent directory's domains.json ({domain: instruction}), else the
    built-in one.

    Args:
      name: domain name, e.g. "biology".
      domain_dir: optional domain directory that may hold instruction.txt (its text with
        surrounding whitespace stripped is used).

    Returns:
      The instruction string, or None when neither exists.
    """
    if domain_dir is not None:
        path = os.path.join(domain_dir, INSTRUCTION_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
            if not text:
                raise DataError.at(path, "instruction file is empty")
            return text
        table_path = os.path.join(os.path.dirname(os.path.abspath(domain_dir)), DOMAINS_FILE)
        if os.path.isfile(table_path):
            with open(table_path, encoding="utf-8") as f:
                try:
                    table = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError.at(table_path, f"malformed JSON: {e.msg} (line {e.lineno})") from None
            if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
                raise DataError.at(table_path, "must be a JSON object {domain: instruction}")
            if table.get(name):
                return table[name]
    return INSTRUCTIONS.get(name)


def _read_jsonl(path: str):
    """(line number, object) of each non-blank line; a clear error when the file is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found (a BRIGHT domain needs "
                                f"{QUERIES_FILE} and {DOCUMENTS_FILE})")
    return read_objects(path)


def is_domain_dir(path: str) -> bool:
    """True when path is one domain's directory (holds queries.jsonl)."""
    return os.path.isfile(os.path.join(path, QUERIES_FILE))


def list_domains(data_dir: str) -> List[str]:
    """Names of the domain sub-directories of data_dir: BRIGHT's order first, then sorted.

    Args:
      data_dir: a directory with one sub-directory (holding queries.jsonl) per domain.

    Returns:
      Domain names.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir}: data directory not found")
    found = sorted(n for n in os.listdir(data_dir) if is_domain_dir(os.path.join(data_dir, n)))
    if not found:
        raise FileNotFoundError(f"{data_dir}: no domain directories (sub-directories holding "
                                f"{QUERIES_FILE}) and no {QUERIES_FILE} in it")
    known = [n for n in BRIGHT_DOMAINS if n in found]
    return known + [n for n in found if n not in BRIGHT_DOMAINS]


def load_domain(domain_dir: str, name: Optional[str] = None) -> BrightDomain:
    """Loads and validates one domain directory.

    Args:
      domain_dir: directory with queries.jsonl and documents.jsonl (and maybe instruction.txt).
      name: domain name; defaults to the directory's base name.

    Returns:
      A BrightDomain.

    Raises:
      FileNotFoundError: a file is missing.
      DataError: malformed JSON, missing or mistyped fields, duplicate ids, gold ids
        naming unknown documents, empty files.
    """
    name = name or os.path.basename(os.path.normpath(domain_dir))
    doc_path = os.path.join(domain_dir, DOCUMENTS_FILE)
    doc_ids, documents, doc_line = [], [], {}
    for lineno, record in _read_jsonl(doc_path):
        did = get_id(doc_path, lineno, record, "id")
        if did in doc_line:
            raise DataError.at(doc_path, f"duplicate document id {did!r} (first on line "
                                    f"{doc_line[did]})", lineno, "id")
        doc_line[did] = lineno
        doc_ids.append(did)
        documents.append(get_text(doc_path, lineno, record, "content"))

    q_path = os.path.join(domain_dir, QUERIES_FILE)
    query_ids, queries, gold, excluded, q_line = [], [], [], [], {}
    for lineno, record in _read_jsonl(q_path):
        qid = get_id(q_path, lineno, record, "id")
        if qid in q_line:
            raise DataError.at(q_path, f"duplicate query id {qid!r} (first on line "
                                    f"{q_line[qid]})", lineno, "id")
        q_line[qid] = lineno
        text = get_text(q_path, lineno, record, "query")
        gold_ids = get_id_list(q_path, lineno, record, "gold_ids", required=True)
        if not gold_ids:
            raise DataError.at(q_path, "empty: every query needs at least one gold id",
                                    lineno, "gold_ids")
        for did in gold_ids:
            if did not in doc_line:
                raise DataError.at(q_path, f"gold id {did!r} names no document in "
                                        f"{doc_path}", lineno, "gold_ids")
        excl = get_id_list(q_path, lineno, record, "excluded_ids", required=False)
        query_ids.append(qid)
        queries.append(text)
        gold.append(list(dict.fromkeys(gold_ids)))
        excluded.append([d for d in dict.fromkeys(excl) if d in doc_line])
    return BrightDomain(name=name, query_ids=query_ids, queries=queries, gold_ids=gold,
                        excluded_ids=excluded, doc_ids=doc_ids, documents=documents,
                        instruction=domain_instruction(name, domain_dir))


def load_bright(data_dir: str, domains: Optional[Sequence[str]] = None) -> List[BrightDomain]:
    """Loads the chosen domains of a BRIGHT-format directory.

    Args:
      data_dir: a directory of domain sub-directories, or one domain directory itself.
      domains: names to load (default: every domain found); each must exist.

    Returns:
      BrightDomain list, in the order asked (or list_domains order).
    """
    if is_domain_dir(data_dir):
        single = os.path.basename(os.path.normpath(data_dir))
        if domains and list(domains) != [single]:
            raise ValueError(f"{data_dir} is a single domain directory ({single!r}); "
                             f"cannot select domains {list(domains)}")
        return [load_domain(data_dir, single)]
    available = list_domains(data_dir)
    names = list(domains) if domains else available
    missing = [n for n in names if n not in available]
    if missing:
        raise FileNotFoundError(f"{data_dir}: no domain directory for {missing}; "
                                f"found {available}")
    return [load_domain(os.path.join(data_dir, n), n) for n in names]
