"""Wording of the synthetic task: queries, step-by-step reasoning, and a parser back.

Query:     "Start with 7. Add 3, then double it, then subtract 4."
Reasoning: "7 plus 3 is 10\\n\\n10 doubled is 20\\n\\n20 minus 4 is 16"

Every reasoning step is one "\\n\\n"-separated segment that starts and ends with a digit.
Under a Qwen-style pre-tokenizer a digit is its own piece, so "\\n\\n" after a step is
never merged with punctuation (LaSER's split-token rule sees every step end), and the
reasoning appended to a query ending in "." (or to a chat-wrapped query ending in "\\n\\n")
keeps the query's tokens as an exact prefix of the explicit text's tokens.
"""
from __future__ import annotations

import random
import re

from laser_jax.data.tasks.arithmetic_chains import ADD, MUL, SUB, Chain, Op, World, iter_steps

SEGMENT_SEP = "\n\n"

_STARTS = ("Start with {s}.", "Begin at {s}.", "Take {s}.")
# Per operation kind: phrasings in a query (paraphrase level 0 uses the first only).
_OP_PHRASES = {
    ADD: ("add {k}", "increase it by {k}"),
    SUB: ("subtract {k}", "decrease it by {k}"),
    (MUL, 2): ("double it", "multiply it by two"),
    (MUL, 3): ("triple it", "multiply it by three"),
}
_STEP_TEMPLATES = {ADD: "{a} plus {k} is {b}", SUB: "{a} minus {k} is {b}",
                   (MUL, 2): "{a} doubled is {b}", (MUL, 3): "{a} tripled is {b}"}
# Joiners: (between steps, before the last step).
_JOINERS = ((", then ", ", then "), (", ", ", and finally "))


def instruction(world: World) -> str:
    """The retrieval instruction of the task (training and evaluation)."""
    wrap = f" modulo {world.size}" if world.wrap else ""
    return f"Retrieve passages about the number these steps reach{wrap}."


def _key(op: Op):
    return (op.kind, op.k) if op.kind == MUL else op.kind


def op_phrase(op: Op, variant: int = 0) -> str:
    phrases = _OP_PHRASES[_key(op)]
    return phrases[variant % len(phrases)].format(k=op.k)


def render_query(chain: Chain, rng: random.Random, paraphrase: bool = True) -> str:
    """The query text; with `paraphrase`, start, operation and joiner wordings vary."""
    pick = (lambda n: rng.randrange(n)) if paraphrase else (lambda n: 0)
    start = _STARTS[pick(len(_STARTS))].format(s=chain.start)
    mid, last = _JOINERS[pick(len(_JOINERS))]
    phrases = [op_phrase(op, pick(2)) for op in chain.ops]
    body = phrases[0] if len(phrases) == 1 else mid.join(phrases[:-1]) + last + phrases[-1]
    return f"{start} {body[0].upper()}{body[1:]}."


def reasoning_steps(chain: Chain, world: World) -> list[str]:
    """One sentence per operation, "a <op> k is b" (no final punctuation)."""
    return [_STEP_TEMPLATES[_key(op)].format(a=a, k=op.k, b=b)
            for a, op, b in iter_steps(chain, world)]


def render_reasoning(chain: Chain, world: World) -> str:
    return SEGMENT_SEP.join(reasoning_steps(chain, world))


def _phrase_patterns():
    pats = []
    for key, phrases in _OP_PHRASES.items():
        kind, fixed_k = (key if isinstance(key, tuple) else (key, None))
        for p in phrases:
            rx = re.escape(p).replace(re.escape("{k}"), r"(\d+)")
            pats.append((re.compile(rf"^{rx}$", re.IGNORECASE), kind, fixed_k))
    return pats


_PHRASE_PATTERNS = _phrase_patterns()
_START_RX = re.compile(r"^(?:Start with|Begin at|Take) (\d+)\. (.+)\.$")
_JOIN_RX = re.compile(r", and finally |, then |, ")


def parse_op(phrase: str) -> Op:
    for rx, kind, fixed_k in _PHRASE_PATTERNS:
        m = rx.match(phrase)
        if m:
            return Op(kind, fixed_k if fixed_k is not None else int(m.group(1)))
    raise ValueError(f"not an operation phrase: {phrase!r}")


def parse_query(text: str) -> Chain:
    """Invert `render_query` (any paraphrase): the chain a query text describes."""
    m = _START_RX.match(text)
    if not m:
        raise ValueError(f"not a synthetic query: {text!r}")
    return Chain(int(m.group(1)), tuple(parse_op(p) for p in _JOIN_RX.split(m.group(2))))
