"""The world of the hops task: named entities, relations over them, and chains of relations.

Each relation is a permutation of the entities (every entity has exactly one mentor, and is
the mentor of exactly one other), with no entity its own relative, no relation undoing
itself in two hops (r(r(x)) != x), and different relations of one entity naming different
entities. So a chain (start, relations) walks through one entity per hop, and replacing
any ONE relation of a chain by another ends on a different entity: the near misses that the
hard negatives describe. A valid chain visits distinct entities, none of them the start (the
query names the start only, never the answer).
"""
from __future__ import annotations

import itertools
import random
from typing import List, NamedTuple, Sequence

ENUMERATE_LIMIT = 300_000  # chain spaces up to this size are enumerated, larger ones sampled


class World(NamedTuple):
    """names[x] is entity x; relations[r] the r-th relation's word; table[r][x] the r-relation of x."""
    names: tuple
    relations: tuple
    table: tuple


class Chain(NamedTuple):
    """A start entity and the relations applied to it, innermost first."""
    start: int
    rels: tuple


class NearMiss(NamedTuple):
    """The chain with relation `step` replaced by `rel`, which ends on `end`."""
    step: int
    rel: int
    end: int


def _permutation(n: int, rng: random.Random, earlier: Sequence[Sequence[int]], tries: int = 200_000) -> List[int]:
    """A random permutation p of 0..n-1 with p[x] != x, p[p[x]] != x and p[x] != q[x] for
    every earlier permutation q (rejection sampling)."""
    perm = list(range(n))
    for _ in range(tries):
        rng.shuffle(perm)
        if all(perm[x] != x and perm[perm[x]] != x and all(q[x] != perm[x] for q in earlier) for x in range(n)):
            return list(perm)
    raise ValueError(f"could not draw relation {len(earlier) + 1} over {n} entities; use more entities "
                     "or fewer relations")


def make_world(names: Sequence[str], relations: Sequence[str], rng: random.Random) -> World:
    """One permutation per relation (module doc), drawn with `rng`."""
    if len(names) < len(relations) + 3:
        raise ValueError(f"{len(relations)} relations need at least {len(relations) + 3} entities")
    table: List[List[int]] = []
    for _ in relations:
        table.append(_permutation(len(names), rng, table))
    return World(tuple(names), tuple(relations), tuple(tuple(t) for t in table))


def states(chain: Chain, world: World) -> List[int]:
    """The entity after each hop (len == number of relations); the last is the answer."""
    out, x = [], chain.start
    for r in chain.rels:
        x = world.table[r][x]
        out.append(x)
    return out


def is_valid(chain: Chain, world: World) -> bool:
    """Distinct entities on the way, none of them the start."""
    path = [chain.start] + states(chain, world)
    return len(set(path)) == len(path)


def facts_used(chain: Chain, world: World) -> List[tuple]:
    """(relation, subject, object) of each hop."""
    before = [chain.start] + states(chain, world)
    return [(r, a, b) for r, a, b in zip(chain.rels, before, before[1:])]


def near_misses(chain: Chain, world: World, rng: random.Random) -> List[NearMiss]:
    """At most one near miss per hop (hops visited in a random order): the chain with that
    hop's relation replaced by another, ending on an entity that is neither the answer nor an
    earlier near miss's."""
    used = {states(chain, world)[-1]}
    out = []
    hops = list(range(len(chain.rels)))
    rng.shuffle(hops)
    for i in hops:
        cands = []
        for r in range(len(world.relations)):
            if r != chain.rels[i]:
                end = states(Chain(chain.start, chain.rels[:i] + (r,) + chain.rels[i + 1:]), world)[-1]
                if end not in used:
                    cands.append(NearMiss(i, r, end))
        if cands:
            miss = rng.choice(cands)
            used.add(miss.end)
            out.append(miss)
    return out


def sample_chains(rng: random.Random, count: int, n_hops: int, world: World, exclude=frozenset(),
                  allow_fewer: bool = False) -> List[Chain]:
    """`count` distinct valid chains of `n_hops` relations, none in `exclude`.

    Small spaces are enumerated (then sampled uniformly among valid chains), large ones
    sampled by rejection. If fewer valid chains exist, returns them all (shuffled) when
    `allow_fewer`, else raises ValueError.
    """
    n, r = len(world.names), len(world.relations)
    if n * r ** n_hops <= ENUMERATE_LIMIT:
        valid = [c for c in (Chain(s, rels) for s in range(n) for rels in itertools.product(range(r), repeat=n_hops))
                 if c not in exclude and is_valid(c, world)]
        if len(valid) < count and not allow_fewer:
            raise ValueError(f"asked for {count} chains of {n_hops} hops but only {len(valid)} valid ones "
                             "remain; use more entities or relations, or fewer queries (n_train, n_eval_per_domain, "
                             "n_dev_per_domain)")
        return rng.sample(valid, min(count, len(valid)))
    seen, out = set(exclude), []
    for _ in range(1000 * count + 1000):
        if len(out) == count:
            break
        chain = Chain(rng.randrange(n), tuple(rng.randrange(r) for _ in range(n_hops)))
        if chain not in seen and is_valid(chain, world):
            seen.add(chain)
            out.append(chain)
    if len(out) < count:
        raise ValueError(f"could not sample {count} valid chains of {n_hops} hops")
    return out
