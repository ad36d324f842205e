"""What every generated task samples the same way: the held-out (eval/ and dev/) chains, the
training chains by length, and each training query's random negatives. Each task brings its
own chain sampler and world; the random draws happen in the order the tasks always made them,
so generated data is unchanged."""
from __future__ import annotations

import random
from typing import Callable, Dict, Iterable, List, Sequence

from laser_jax.data.tasks.layout import split_lengths


def train_chains(rng: random.Random, n_train: int, lengths: Sequence[int], world, sample_chains: Callable,
                 held_out: Iterable[Dict[int, list]]) -> List:
    """`n_train` chains spread over `lengths` (`split_lengths`), none of those held out (per
    length, in any of the `held_out` dicts), shuffled. `sample_chains(rng, count, n, world,
    exclude=..., allow_fewer=...)` is the task's sampler; a length with too few chains passes
    its shortfall to the next one, and only the longest must deliver in full."""
    chains, shortfall = [], 0
    held_out = list(held_out)
    for n, count in split_lengths(n_train, list(lengths)).items():
        exclude = set().union(*(set(split.get(n, ())) for split in held_out))
        got = sample_chains(rng, count + shortfall, n, world, exclude=exclude, allow_fewer=n < max(lengths))
        shortfall = count + shortfall - len(got)
        chains += got
    rng.shuffle(chains)
    return chains


def random_negatives(rng: random.Random, end: int, hard: set, n_entities: int, count: int) -> List[int]:
    """`count` entities (or all there are) drawn without replacement, neither the answer
    `end` nor one of the `hard` negatives."""
    others = [x for x in range(n_entities) if x != end and x not in hard]
    return rng.sample(others, min(count, len(others)))


def held_out_chains(seed: int, lengths: Sequence[int], n_eval: int, n_dev: int, world, sample_chains: Callable):
    """(eval chains, dev chains, their rngs) by length: `n_eval` (`n_dev`) chains per length
    from rngs seeded "<seed>/eval" ("<seed>/dev"); dev is drawn after and apart from eval, so
    eval/ is the same with or without dev/ (no dev chains when n_dev is 0)."""
    rng_eval = random.Random(f"{seed}/eval")
    eval_chains = {n: sample_chains(rng_eval, n_eval, n, world) for n in lengths}
    rng_dev = random.Random(f"{seed}/dev")
    dev_chains = {n: sample_chains(rng_dev, n_dev, n, world, exclude=set(eval_chains[n]))
                  for n in lengths} if n_dev else {}
    return eval_chains, dev_chains, rng_eval, rng_dev
