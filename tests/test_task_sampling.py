"""laser_jax/data/tasks/sampling.py: what the generated tasks sample the same way."""
import random

from laser_jax.data.tasks.sampling import random_negatives, train_chains


def test_train_chains_skip_held_out_and_pass_a_shortfall_to_longer_lengths():
    calls = []

    def sample(rng, count, n, world, exclude, allow_fewer):
        calls.append((count, n, sorted(exclude), allow_fewer))
        pool = [(n, i) for i in range(world[n]) if (n, i) not in exclude]
        return pool[:count] if allow_fewer else pool[:count] + [(n, "x")] * max(0, count - len(pool))

    world = {1: 2, 2: 50}  # only two chains of length 1 exist
    held = ({1: [(1, 0)]}, {2: [(2, 1)]})
    chains = train_chains(random.Random(0), 10, [1, 2], world, sample, held)
    assert len(chains) == 10
    assert calls[0] == (5, 1, [(1, 0)], True)  # the short length may deliver fewer ...
    assert calls[1] == (9, 2, [(2, 1)], False)  # ... and the longest makes up its shortfall of 4
    assert (1, 0) not in chains and (2, 1) not in chains


def test_random_negatives_are_neither_the_answer_nor_a_hard_negative():
    got = random_negatives(random.Random(1), end=3, hard={4, 5}, n_entities=8, count=3)
    assert len(got) == len(set(got)) == 3 and not set(got) & {3, 4, 5}
    assert sorted(random_negatives(random.Random(1), 0, {1}, 4, count=10)) == [2, 3]  # all there are
