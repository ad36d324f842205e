"""A language model writing the reasoning of queries, and how right that reasoning is.

- `query_prefixes`: what comes before the reasoning in an explicit-view text (the query
  template with the instruction, chat-wrapped when the format says so): the prompt.
- `generate_reasonings`: greedy continuations of prompts (model/generate.py), as strings;
  rewrite-then-retrieve (experiments/rewrite.py) and the pretraining stage use it.
- `end_state_accuracy`: on a split of a generated task, whether the ANSWER of each generated
  reasoning (the last match of the task's answer pattern, meta.json "answer": the last number
  for the arithmetic task, the last entity name for the hops task) equals its chain's end
  state (`<split>/<domain>/chains.jsonl` `states[-1]`), overall and per domain (the end-number
  or end-entity accuracy; train/stages.py reports it for the pretrained LM;
  `python -m laser_jax.experiments.lm_eval` is its command line).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.data.formatting import TextFormat, chat_wrap, format_query
from laser_jax.data.tasks.layout import answer_spec, find_meta
from laser_jax.data.jsonl import get_id, get_text, read_objects
from laser_jax.data.tokenize import Bucketing, left_pad, pad_token_id, tokenize_texts
from laser_jax.inference.load import LoadedModel
from laser_jax.model.decoder import Decoder
from laser_jax.model.generate import greedy_generate
from laser_jax.retrieval import bright

REASONING_FILE = "reasoning.jsonl"


def read_reasoning(domain_dir: str) -> Dict[str, str]:
    """{query id: gold reasoning} from `<domain_dir>/reasoning.jsonl` ({"id", "reasoning"} lines).

    Raises:
      FileNotFoundError: the file is missing; DataError naming file, line and field.
    """
    path = os.path.join(domain_dir, REASONING_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no gold reasoning for this domain")
    return {get_id(path, line, row, "id"): get_text(path, line, row, "reasoning")
            for line, row in read_objects(path)}


def query_prefixes(text_format: TextFormat, tokenizer, queries: Sequence[str], instruction: str) -> List[str]:
    """What comes before the reasoning in each explicit-view text: the query template filled
    with the instruction and query, chat-wrapped (with `tokenizer`) when the format says so."""
    out = []
    for q in queries:
        text = format_query(text_format.query_template, instruction, q)
        out.append(chat_wrap(tokenizer, text) if text_format.chat_template else text)
    return out


DEFAULT_MARGIN = 16  # tokens beyond the longest gold reasoning


# ------------------------------------------------------------------------------ generating
def decode_generation(tokenizer, tokens: np.ndarray, length: int, stopped: bool) -> str:
    """The text of one generated row: its first `length` tokens without the stop token."""
    ids = [int(t) for t in tokens[:length - 1 if stopped else length]]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def generate_reasonings(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 16,
                        max_prompt_length: int = 1024, stop_id: Optional[int] = None,
                        bucketing: Bucketing = Bucketing()) -> List[str]:
    """Greedy continuations of `prompts` by the language model, as strings, in input order.

    Prompts are tokenized as given (right-truncated at `max_prompt_length`), sorted by length,
    cut into batches of exactly `batch_size` rows (the last one filled with one-token rows)
    and left padded to a length bucket, so few programs are compiled.

    Args:
      lm: the language model.
      prompts: the prompt texts.
      max_new_tokens: the most tokens generated per prompt.
      batch_size: rows per generation call.
      max_prompt_length: prompt truncation length in tokens.
      stop_id: the token that ends a continuation (default the tokenizer's EOS); it is not
        part of the returned text.
      bucketing: how prompt widths are chosen.
    """
    tok = lm.tokenizer
    stop = int(tok.eos_token_id if stop_id is None else stop_id)
    pad = pad_token_id(tok)
    model = Decoder(lm.cfg)
    rows = tokenize_texts(tok, list(prompts), max_prompt_length)
    if any(not r for r in rows):
        raise ValueError("an empty prompt (no tokens) cannot be continued")
    order = np.argsort([-len(r) for r in rows], kind="stable")
    out: List[str] = [""] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [rows[i] for i in idx] + [[pad]] * (batch_size - len(idx))
        ids, mask = left_pad(batch, bucketing.length(max(len(r) for r in batch), max_prompt_length), pad)
        gen = jax.device_get(greedy_generate(model, lm.variables, jnp.asarray(ids), jnp.asarray(mask),
                                             max_new_tokens=max_new_tokens, stop_ids_B=stop, pad_id=pad))
        for row, i in enumerate(idx):
            out[i] = decode_generation(tok, np.asarray(gen.tokens[row]), int(gen.lengths[row]),
                                       bool(gen.stopped[row]))
    return out


def default_max_new_tokens(tokenizer, data_dir: str, margin: int = DEFAULT_MARGIN) -> int:
    """The longest gold reasoning (reasoning.jsonl) of any domain of `data_dir`, in the LM's
    tokens, plus `margin`.

    Raises:
      ValueError: no domain has gold reasoning (then give max_new_tokens).
    """
    dirs = [data_dir] if bright.is_domain_dir(data_dir) else [
        os.path.join(data_dir, d) for d in bright.list_domains(data_dir)]
    texts = [r for d in dirs if os.path.isfile(os.path.join(d, REASONING_FILE))
             for r in read_reasoning(d).values()]
    if not texts:
        raise ValueError(f"{data_dir}: no {REASONING_FILE} to size the generated reasoning from; "
                         "give max_new_tokens (--max_new_tokens)")
    return max(len(ids) for ids in tokenize_texts(tokenizer, texts, 10 ** 9)) + margin


# ------------------------------------------------------------------- end-state accuracy
LM_EVAL_MARGIN = 8  # tokens beyond the longest gold reasoning, for end_state_accuracy


@dataclasses.dataclass(frozen=True)
class SplitQuery:
    domain: str
    id: str
    query: str
    instruction: str
    reasoning: str  # gold reasoning ("" when the split has none)
    end_state: Optional[Union[int, str]]  # the chain's last state (None without chains.jsonl)
    states: tuple = ()  # every state of the chain, one per reasoning step (the hop-j entities)


def _jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_split(split_dir: str) -> List[SplitQuery]:
    """Every query of a BRIGHT-format split with its instruction, gold reasoning and end state."""
    with open(os.path.join(split_dir, "domains.json"), encoding="utf-8") as f:
        domains = json.load(f)
    out = []
    for dom, instruction in domains.items():
        ddir = os.path.join(split_dir, dom)
        reasoning, chains = {}, {}
        if os.path.exists(os.path.join(ddir, "reasoning.jsonl")):
            reasoning = {r["id"]: r["reasoning"] for r in _jsonl(os.path.join(ddir, "reasoning.jsonl"))}
        if os.path.exists(os.path.join(ddir, "chains.jsonl")):
            chains = {c["id"]: tuple(c["states"]) for c in _jsonl(os.path.join(ddir, "chains.jsonl"))}
        for q in _jsonl(os.path.join(ddir, "queries.jsonl")):
            states = chains.get(q["id"], ())
            out.append(SplitQuery(dom, q["id"], q["query"], instruction, reasoning.get(q["id"], ""),
                                  states[-1] if states else None, states))
    return out


def end_answer(text: str, answer: dict):
    """The answer of a reasoning text under a task's answer spec (tasks.layout.answer_spec):
    its last match of the pattern, an int for kind "number"; None when nothing matches."""
    found = re.findall(answer["pattern"], text)
    if not found:
        return None
    return int(found[-1]) if answer["kind"] == "number" else found[-1]


def split_prompts(tokenizer, queries: Sequence[SplitQuery], text_format: TextFormat) -> List[str]:
    """The explicit view's prefix of each query (what its reasoning follows)."""
    return [query_prefixes(text_format, tokenizer, [q.query], q.instruction)[0] for q in queries]


def score(queries: Sequence[SplitQuery], generated: Sequence[str], answer: Optional[dict] = None) -> Dict:
    """{"accuracy", "per_domain", "exact" (whole reasoning equals the gold), "n", "answer"
    (its kind)} of generated reasoning against the queries' end states; `answer` is the
    task's answer spec (default: the last number)."""
    answer = answer or answer_spec(None)
    ok = np.array([end_answer(g, answer) == q.end_state for q, g in zip(queries, generated)], bool)
    exact = np.array([g == q.reasoning for q, g in zip(queries, generated)], bool)
    per = {}
    for dom in sorted({q.domain for q in queries}):
        idx = [i for i, q in enumerate(queries) if q.domain == dom]
        per[dom] = float(ok[idx].mean())
    return {"accuracy": float(ok.mean()) if len(ok) else 0.0, "per_domain": per,
            "exact": float(exact.mean()) if len(exact) else 0.0, "n": int(len(ok)), "answer": answer["kind"]}


def end_state_accuracy(lm: LoadedModel, split_dir: str, text_format: TextFormat = TextFormat(), *,
                       max_new: int = 0, batch_size: int = 128, examples: int = 3) -> Dict:
    """Greedy end-state accuracy (end-number or end-entity, by the task's meta.json) of the
    language model `lm` on a split (module doc): score() plus "max_new" and a few
    "examples" ({query, generated, gold})."""
    queries = [q for q in load_split(split_dir) if q.end_state is not None]
    if not queries:
        raise FileNotFoundError(f"{split_dir}: no queries with chains.jsonl end states")
    max_new = max_new or default_max_new_tokens(lm.tokenizer, split_dir, LM_EVAL_MARGIN)
    generated = generate_reasonings(lm, split_prompts(lm.tokenizer, queries, text_format),
                                   max_new_tokens=max_new, batch_size=min(batch_size, len(queries)))
    result = score(queries, generated, answer_spec(find_meta(split_dir)))
    result["max_new"] = int(max_new)
    result["examples"] = [{"query": q.query, "generated": g, "gold": q.reasoning}
                          for q, g in zip(queries[:examples], generated[:examples])]
    return result


def format_result(result: Dict) -> str:
    per = ", ".join(f"{d} {100 * a:.1f}" for d, a in result["per_domain"].items())
    kind = result.get("answer", "number")
    return (f"greedy end-{kind} accuracy {100 * result['accuracy']:.1f}% ({per}); exact reasoning "
            f"{100 * result['exact']:.1f}%; {result['n']} queries")
