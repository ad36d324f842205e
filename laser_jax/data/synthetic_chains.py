"""The arithmetic world of the synthetic task: numbers modulo N and chains of operations.

A chain is a start number and a few operations ("add 3", "subtract 2", "double",
"triple"); applying them one after the other walks through intermediate states to an end
state. A near miss is the end state reached when exactly one operation of the chain is
replaced by a plausible mistake (off-by-one operand, add/subtract swapped, double/triple
swapped), which is what the hard negatives describe.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator, NamedTuple, Sequence

ADD, SUB, MUL = "add", "sub", "mul"


class Op(NamedTuple):
    """One operation: kind in (add, sub, mul) and its operand."""
    kind: str
    k: int


class Chain(NamedTuple):
    """A start number and its operations; the states follow from them."""
    start: int
    ops: tuple[Op, ...]


class NearMiss(NamedTuple):
    """The chain with operation `step` replaced by `op`, which ends on `end`."""
    step: int
    op: Op
    end: int


def op_vocabulary(max_operand: int, multiply: bool = True) -> tuple[Op, ...]:
    """All operations: add/subtract 1..max_operand, then double and triple."""
    ops = [Op(ADD, k) for k in range(1, max_operand + 1)]
    ops += [Op(SUB, k) for k in range(1, max_operand + 1)]
    if multiply:
        ops += [Op(MUL, 2), Op(MUL, 3)]
    return tuple(ops)


def apply_op(x: int, op: Op, modulus: int) -> int:
    if op.kind == ADD:
        return (x + op.k) % modulus
    if op.kind == SUB:
        return (x - op.k) % modulus
    if op.kind == MUL:
        return (x * op.k) % modulus
    raise ValueError(f"unknown operation {op!r}")


def states(chain: Chain, modulus: int) -> list[int]:
    """The state after each operation (len == number of operations); the last is the end."""
    out, x = [], chain.start
    for op in chain.ops:
        x = apply_op(x, op, modulus)
        out.append(x)
    return out


def end_state(chain: Chain, modulus: int) -> int:
    return states(chain, modulus)[-1]


def confusions(op: Op, vocab: Sequence[Op]) -> list[Op]:
    """Plausible mistakes for `op`, restricted to operations of the vocabulary."""
    if op.kind in (ADD, SUB):
        other = SUB if op.kind == ADD else ADD
        cands = [Op(op.kind, op.k + 1), Op(op.kind, op.k - 1), Op(other, op.k)]
    else:
        cands = [Op(MUL, 5 - op.k)]  # double <-> triple
    return [c for c in cands if c in vocab and c != op]


def near_misses(chain: Chain, modulus: int, vocab: Sequence[Op], rng: random.Random) -> list[NearMiss]:
    """At most one near miss per step, each with a distinct end state != the true end.

    Steps are visited in a random order; a step whose plausible mistakes all land on an
    end already used falls back to any other operation of the vocabulary.
    """
    true_end = end_state(chain, modulus)
    used = {true_end}
    out = []
    steps = list(range(len(chain.ops)))
    rng.shuffle(steps)
    for i in steps:
        pools = (confusions(chain.ops[i], vocab), [o for o in vocab if o != chain.ops[i]])
        for pool in pools:
            cands = []
            for op in pool:
                wrong = Chain(chain.start, chain.ops[:i] + (op,) + chain.ops[i + 1:])
                end = end_state(wrong, modulus)
                if end not in used:
                    cands.append(NearMiss(i, op, end))
            if cands:
                miss = rng.choice(cands)
                used.add(miss.end)
                out.append(miss)
                break
    return out


def sample_chains(rng: random.Random, count: int, n_steps: int, modulus: int,
                  vocab: Sequence[Op], exclude: set = frozenset()) -> list[Chain]:
    """`count` distinct random chains of `n_steps` operations, none in `exclude`.

    Raises ValueError if the space of chains is too small for the request.
    """
    space = modulus * len(vocab) ** n_steps
    if count + len(exclude) > space:
        raise ValueError(f"asked for {count} chains of {n_steps} steps but only {space} exist "
                         f"({len(exclude)} excluded); enlarge the modulus or the operations")
    if 4 * (count + len(exclude)) > space:  # dense request: enumerate, then sample
        every = [Chain(s, tuple(ops)) for s in range(modulus)
                 for ops in itertools.product(vocab, repeat=n_steps)]
        return rng.sample([c for c in every if c not in exclude], count)
    seen, out = set(exclude), []
    while len(out) < count:
        chain = Chain(rng.randrange(modulus), tuple(rng.choice(vocab) for _ in range(n_steps)))
        if chain not in seen:
            seen.add(chain)
            out.append(chain)
    return out


def iter_steps(chain: Chain, modulus: int) -> Iterator[tuple[int, Op, int]]:
    """(state before, operation, state after) for each step."""
    x = chain.start
    for op in chain.ops:
        y = apply_op(x, op, modulus)
        yield x, op, y
        x = y
