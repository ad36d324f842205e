"""The document corpus of the synthetic task: a few short passages about each number.

Each number n in 0..N-1 gets `per_number` passages. A passage opens on n (digits, alone
or with a lead-in or its English name) and states a few facts about it, drawn from a pool: parity, its neighbours,
what doubling gives, which number doubles to it, its distance to the top (or, modulo N,
what brings it back to 0), and two made-up attributes (a colour and a totem animal) fixed per number. The facts
mention other numbers, so matching digits alone does not find the right passage, and the
passages of one number share no fixed wording.
"""
from __future__ import annotations

import random
from typing import NamedTuple

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
COLORS = ("amber azure beige coral crimson cyan gold green grey indigo ivory jade lilac "
          "maroon navy olive orange pink plum red rust silver teal violet").split()
ANIMALS = ("badger bison crane crow deer eagle falcon fox frog goat hare heron horse lynx "
           "mole moose otter owl panda raven seal swan tiger wolf").split()


class Document(NamedTuple):
    """One passage: its id, the number it describes, and its text."""
    id: str
    number: int
    content: str


def number_word(n: int) -> str:
    """English name of 0 <= n < 1000, e.g. 42 -> "forty-two"."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_word supports 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("-" + _ONES[ones] if ones else "")
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + (" and " + number_word(rest) if rest else "")


def _facts(n: int, size: int, wrap: bool, color: str, animal: str) -> list[str]:
    """Predicates (to follow a subject) that hold for n among 0..size-1 (modulo size if wrap)."""
    inside = (lambda y: y % size) if wrap else (lambda y: y if 0 <= y < size else None)
    facts = ["is even" if n % 2 == 0 else "is odd", f"has the color {color}",
             f"has the {animal} as its totem"]
    if inside(n - 1) is not None:
        facts.append(f"comes right after {inside(n - 1)}")
    if inside(n + 1) is not None:
        facts.append(f"comes just before {inside(n + 1)}")
    if inside(2 * n) is not None:
        facts.append(f"gives {inside(2 * n)} when doubled")
    halves = [m for m in range(size) if inside(2 * m) == n]
    if halves:
        facts.append(f"is what {halves[0]} becomes when doubled")
    if wrap and n:
        facts.append(f"returns to 0 after adding {size - n}")
    if not wrap and n < size - 1:
        facts.append(f"is {size - 1 - n} less than {size - 1}")
    return facts


def _names(n: int) -> tuple[str, ...]:
    """Ways a passage opens on its number; each keeps the digits (a model trained for minutes
    from scratch must otherwise also learn that "Thirty-six" is 36 before it can retrieve)."""
    word = number_word(n)
    return (str(n), f"The number {n}", f"{word[0].upper() + word[1:]} ({n})")


def build_corpus(size: int, wrap: bool, per_number: int, rng: random.Random,
                 facts_per_doc: int = 3) -> list[Document]:
    """`per_number` distinct passages for each number, ordered by number; ids "n{n}_{j}"."""
    colors = _assign(COLORS, size, rng)
    animals = _assign(ANIMALS, size, rng)
    docs = []
    for n in range(size):
        pool = _facts(n, size, wrap, colors[n], animals[n])
        names = _names(n)
        texts = set()
        for j in range(per_number):
            for _ in range(100):
                facts = rng.sample(pool, min(facts_per_doc, len(pool)))
                text = _sentence(names[j % len(names)], facts)
                if text not in texts:
                    break
            texts.add(text)
            docs.append(Document(f"n{n}_{j}", n, text))
    return docs


def _assign(values, size: int, rng: random.Random) -> list[str]:
    """One value per number, all distinct while there are enough values."""
    out = []
    while len(out) < size:
        out += rng.sample(values, len(values))
    return out[:size]


def _sentence(name: str, facts: list[str]) -> str:
    """"<name> <fact1>. It <fact2> and <fact3>." (any number of facts)."""
    first = f"{name} {facts[0]}."
    if len(facts) == 1:
        return first
    rest = facts[1:]
    return f"{first} It {', '.join(rest[:-1]) + ' and ' if len(rest) > 1 else ''}{rest[-1]}."
