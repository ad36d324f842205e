"""The arithmetic world of the synthetic task: numbers 0..size-1 and chains of operations.

A chain is a start number and a few operations ("add 3", "subtract 2", "double",
"triple"); applying them one after the other walks through intermediate states to an end
state. Without wrap-around a chain is valid only if every state stays in 0..size-1 (so
every state has passages in the corpus); with wrap-around arithmetic is modulo size. A near
miss is the end state reached when exactly one operation of the chain is replaced by a
plausible mistake (off-by-one operand, add/subtract swapped, double/triple swapped), which is
what the hard negatives describe.
"""
from __future__ import annotations

import itertools
import random
from typing import Iterator, NamedTuple, Optional, Sequence

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


class World(NamedTuple):
    """Numbers 0..size-1, modulo size if `wrap`, and the operations allowed."""
    size: int
    wrap: bool
    ops: tuple[Op, ...]


def make_world(size: int, wrap: bool, max_operand: int, multiply: bool = True) -> World:
    """Add/subtract 1..max_operand, then (with `multiply`) double and triple."""
    ops = [Op(ADD, k) for k in range(1, max_operand + 1)]
    ops += [Op(SUB, k) for k in range(1, max_operand + 1)]
    if multiply:
        ops += [Op(MUL, 2), Op(MUL, 3)]
    return World(size, wrap, tuple(ops))


def apply_op(x: int, op: Op, world: World) -> Optional[int]:
    """The next state, or None when it leaves 0..size-1 in a world without wrap-around."""
    if op.kind == ADD:
        y = x + op.k
    elif op.kind == SUB:
        y = x - op.k
    elif op.kind == MUL:
        y = x * op.k
    else:
        raise ValueError(f"unknown operation {op!r}")
    if world.wrap:
        return y % world.size
    return y if 0 <= y < world.size else None


def try_states(chain: Chain, world: World) -> Optional[list[int]]:
    """The state after each operation, or None if the chain leaves the world."""
    out, x = [], chain.start
    for op in chain.ops:
        x = apply_op(x, op, world)
        if x is None:
            return None
        out.append(x)
    return out


def states(chain: Chain, world: World) -> list[int]:
    """The state after each operation (len == number of operations); the last is the end."""
    out = try_states(chain, world)
    if out is None:
        raise ValueError(f"{chain} leaves 0..{world.size - 1}")
    return out


def end_state(chain: Chain, world: World) -> int:
    return states(chain, world)[-1]


def iter_steps(chain: Chain, world: World) -> Iterator[tuple[int, Op, int]]:
    """(state before, operation, state after) for each step."""
    before = [chain.start] + states(chain, world)
    return zip(before, chain.ops, before[1:])


def confusions(op: Op, vocab: Sequence[Op]) -> list[Op]:
    """Plausible mistakes for `op`, restricted to operations of the vocabulary."""
    if op.kind in (ADD, SUB):
        other = SUB if op.kind == ADD else ADD
        cands = [Op(op.kind, op.k + 1), Op(op.kind, op.k - 1), Op(other, op.k)]
    else:
        cands = [Op(MUL, 5 - op.k)]  # double <-> triple
    return [c for c in cands if c in vocab and c != op]


def near_misses(chain: Chain, world: World, rng: random.Random) -> list[NearMiss]:
    """At most one near miss per step, each a valid chain with a distinct end != the true end.

    Steps are visited in a random order; a step whose plausible mistakes all fail falls
    back to any other operation of the world.
    """
    used = {end_state(chain, world)}
    out = []
    steps = list(range(len(chain.ops)))
    rng.shuffle(steps)
    for i in steps:
        pools = (confusions(chain.ops[i], world.ops), [o for o in world.ops if o != chain.ops[i]])
        for pool in pools:
            cands = []
            for op in pool:
                path = try_states(Chain(chain.start, chain.ops[:i] + (op,) + chain.ops[i + 1:]), world)
                if path is not None and path[-1] not in used:
                    cands.append(NearMiss(i, op, path[-1]))
            if cands:
                miss = rng.choice(cands)
                used.add(miss.end)
                out.append(miss)
                break
    return out


def sample_chains(rng: random.Random, count: int, n_steps: int, world: World,
                  exclude: frozenset | set = frozenset(), allow_fewer: bool = False) -> list[Chain]:
    """`count` distinct valid random chains of `n_steps` operations, none in `exclude`.

    Small spaces are enumerated (then sampled uniformly among valid chains); large ones are
    sampled by rejection. If fewer valid chains exist, returns them all (shuffled) when
    `allow_fewer`, else raises ValueError.
    """
    space = world.size * len(world.ops) ** n_steps
    if space <= 300_000:
        valid = [c for c in (Chain(s, ops) for s in range(world.size)
                             for ops in itertools.product(world.ops, repeat=n_steps))
                 if c not in exclude and try_states(c, world) is not None]
        if len(valid) < count and allow_fewer:
            return rng.sample(valid, len(valid))
        if len(valid) < count:
            raise ValueError(f"asked for {count} chains of {n_steps} steps but only {len(valid)} "
                             f"valid ones remain; enlarge the world or ask for fewer")
        return rng.sample(valid, count)
    seen, out = set(exclude), []
    for _ in range(1000 * count + 1000):
        if len(out) == count:
            return out
        chain = Chain(rng.randrange(world.size), tuple(rng.choice(world.ops) for _ in range(n_steps)))
        if chain not in seen and try_states(chain, world) is not None:
            seen.add(chain)
            out.append(chain)
    if len(out) == count:
        return out
    raise ValueError(f"could not sample {count} valid chains of {n_steps} steps")
