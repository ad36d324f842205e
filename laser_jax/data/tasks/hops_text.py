"""Wording of the hops task: names, queries, reasoning, facts and passages, and a parser back.

Every entity name is written with a space before it (" Cato"), everywhere: in queries,
reasoning, facts and passages, so that one token of the task's tokenizer stands for it
(hops.py checks it). Reasoning formats (one reasoning step per hop):

  segments   " Cato\\n\\n Dara\\n\\n Eli"       one entity per "\\n\\n" segment
  pairs      " teacher Cato\\n\\n rival Dara\\n\\n mentor Eli"   the relation, then the entity
  sentences  " the teacher of Alba is Cato\\n\\n the rival of Cato is Dara\\n\\n ..."
  names      " Cato Dara Eli"                   one segment; one token per hop, no separator

Query styles: nested ("Find passages about the mentor of the rival of the teacher of Alba.")
and chain ("Start at Alba and follow the teacher, then the rival, then the mentor."). With
facts in the query, the query opens with "Facts: the teacher of Alba is Cato; ...; ... ."
"""
from __future__ import annotations

import random
import re
from typing import List, Sequence

from laser_jax.data.tasks.hops_world import Chain, World, states

SEGMENT_SEP = "\n\n"
REASONING_FORMATS = ("segments", "pairs", "sentences", "names")
QUERY_STYLES = ("nested", "chain")
FACTS = ("weights", "query")
# Made-up names of 4-7 letters (with the space before them, longer than the 4 characters below
# which the spec replaces a reasoning by the query), none a word of the task's other text.
NAMES = tuple("""
Alba Bren Cato Dara Edda Fenn Gala Ilse Joss Kira Lorn Mika Nell Odra Pell Quin Rhea Sela Tova
Ulla Vesk Wynn Xara Yara Zeno Abra Brin Cyra Doran Elka Faro Gwen Hugo Ines Jory Kael Lida Mora
Nico Orla Pavo Rika Sami Tamsin Ursa Vida Wren Yves Zola Ansel Bodi Cirra Delia Emrys Fleur Garth
Hesta Idris Jessa Kellan Lyra Maren Nessa Oren Priya Soren Talia Varra Willa Xeno Yorick Zara Aric
Bela Corin Dwyn Esme Falk Greta Hollis Isko Jarra Kestra Lenna Milo Nyla Osric Pira Ragna Sten
Tilda Ulric Vanya Wulf Yanna Zeph Arlo Brisa Cael Dagny Enzo Freya Gideon Halla Ivor Juno
""".split())
# Common given names: with a given (real LLM) tokenizer, the ones that are one token of it are
# the entities' names after NAMES (made-up names are rarely whole tokens of a large vocabulary).
GIVEN_NAMES = tuple("""
Adam Alan Albert Alex Alice Andrew Angela Anna Anne Arthur Barbara Betty Bill Bruce Bruno
Carl Carlos Carol Charles Chris Claire Clara Daniel David Dennis Diana Donald Dora Edgar Edith Edward
Elena Eliza Ellen Emily Emma Eric Ethan Frank Fred Gabriel George Grace Hannah Harold Harry Helen
Henry Isaac Ivan Jack Jacob James Jane Jason Jean Jeff Jenny Jerry Jesse John Jonas Jose Joseph
Joyce Julia Julie Karen Karl Kate Kevin Laura Leon Linda Lisa Louis Lucas Lucy Luke Maria Mark
Martin Mary Megan Michael Mike Nancy Nathan Nina Noah Oliver Oscar Otto Paul Peter Philip Rachel
Ralph Rita Robert Roger Ruth Ryan Sarah Scott Simon Sophie Steve Susan Thomas Tony Victor Walter
Wendy Xavier
""".split())
RELATIONS = ("mentor", "rival", "teacher", "neighbour", "friend", "partner", "guardian", "cousin")
TRADES = ("baker smith weaver potter miner sailor farmer hunter scribe healer mason tailor carver brewer "
          "fisher herder").split()
PLACES = "hills coast marsh forest valley desert harbour plains islands mountains river lake".split()
COLOURS = ("amber azure beige coral crimson cyan gold green grey indigo ivory jade lilac maroon navy olive "
           "orange pink plum red rust silver teal violet").split()
ANIMALS = ("badger bison crane crow deer eagle falcon fox frog goat hare heron horse lynx mole moose otter "
           "owl panda raven seal swan tiger wolf").split()
_NESTED = ("Find passages about {x}.", "Retrieve passages on {x}.", "Which passages describe {x}?")
_CHAIN = ("Start at {s} and follow {path}.", "From {s}, follow {path}.", "Begin with {s}; follow {path}.")
_OPENINGS = ("Meet", "About", "Consider", "Picture")


def fixed_words() -> set:
    """Every word of the task's own wording (lower case): names must differ from all of them."""
    text = " ".join(_NESTED + _CHAIN + _OPENINGS + tuple(RELATIONS) + tuple(TRADES) + tuple(PLACES)
                    + tuple(COLOURS) + tuple(ANIMALS))
    text += " " + instruction("query") + " facts the of is who works as a an lives by likes colour keeps and then"
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def instruction(facts: str) -> str:
    """The retrieval instruction of the task (training and evaluation)."""
    given = ", using the facts given" if facts == "query" else ""
    return f"Retrieve passages about the person these relations lead to{given}."


def fact_clause(world: World, rel: int, subject: int) -> str:
    """"the mentor of Bren is Cato" (no capital, no full stop)."""
    return f"the {world.relations[rel]} of {world.names[subject]} is {world.names[world.table[rel][subject]]}"


def fact_sentence(world: World, rel: int, subject: int) -> str:
    """A fact as a text of its own: "The mentor of Bren is Cato."."""
    clause = fact_clause(world, rel, subject)
    return clause[0].upper() + clause[1:] + "."


def _question(chain: Chain, world: World, rng: random.Random, paraphrase: bool, style: str) -> str:
    pick = rng.randrange(3) if paraphrase else 0
    words = [world.relations[r] for r in chain.rels]
    start = world.names[chain.start]
    if style == "chain":
        path = ", then ".join(f"the {w}" for w in words)
        return _CHAIN[pick].format(s=start, path=path)
    nested = "".join(f"the {w} of " for w in reversed(words)) + start
    return _NESTED[pick].format(x=nested)


def render_query(chain: Chain, world: World, rng: random.Random, *, paraphrase: bool = True,
                 style: str = "nested", facts: Sequence[tuple] = ()) -> str:
    """The query text; `facts` ((relation, subject) pairs, in order) open it when given."""
    question = _question(chain, world, rng, paraphrase, style)
    if not facts:
        return question
    return "Facts: " + "; ".join(fact_clause(world, r, s) for r, s in facts) + ". " + question


def reasoning_steps(chain: Chain, world: World, fmt: str) -> List[str]:
    """One text per hop, each with its leading space (module doc)."""
    before = [chain.start] + states(chain, world)
    if fmt == "sentences":
        return [" " + fact_clause(world, r, a) for r, a in zip(chain.rels, before)]
    if fmt == "pairs":
        return [f" {world.relations[r]} {world.names[x]}" for r, x in zip(chain.rels, before[1:])]
    return [" " + world.names[x] for x in before[1:]]


def render_reasoning(chain: Chain, world: World, fmt: str) -> str:
    steps = reasoning_steps(chain, world, fmt)
    return "".join(steps) if fmt == "names" else SEGMENT_SEP.join(steps)


def passages(world: World, per_entity: int, rng: random.Random) -> List[dict]:
    """`per_entity` distinct passages about each entity, ordered by entity; ids "e{x}_{j}":
    "Meet Cato, who works as a baker, keeps an owl and likes the colour amber."."""
    n = len(world.names)
    trades, places = _assign(TRADES, n, rng), _assign(PLACES, n, rng)
    colours, animals = _assign(COLOURS, n, rng), _assign(ANIMALS, n, rng)
    out = []
    for x, name in enumerate(world.names):
        pool = [f"works as {_article(trades[x])}", f"lives by the {places[x]}", f"likes the colour {colours[x]}",
                f"keeps {_article(animals[x])}"]
        seen = set()
        for j in range(per_entity):
            for _ in range(100):
                facts = rng.sample(pool, 3)
                text = f"{_OPENINGS[j % len(_OPENINGS)]} {name}, who {facts[0]}, {facts[1]} and {facts[2]}."
                if text not in seen:
                    break
            seen.add(text)
            out.append({"id": f"e{x}_{j}", "entity": name, "content": text})
    return out


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _assign(values: Sequence[str], n: int, rng: random.Random) -> List[str]:
    """One value per entity, all distinct while there are enough values."""
    out: List[str] = []
    while len(out) < n:
        out += rng.sample(list(values), len(values))
    return out[:n]


def answer_pattern(names: Sequence[str]) -> str:
    """A regex matching any entity name as a whole word (longest names first)."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda s: (-len(s), s)))
    return rf"(?<![A-Za-z])(?:{alternatives})(?![A-Za-z])"


def parse_query(text: str, world: World) -> Chain:
    """Invert `render_query` (any paraphrase or style, with or without facts): the chain."""
    text = re.sub(r"^Facts: .*?\. (?=[A-Z])", "", text)
    for template in _NESTED:
        m = re.fullmatch(re.escape(template).replace(re.escape("{x}"), "(.+)"), text)
        if m:
            parts = m.group(1).split(" of ")
            rels = [world.relations.index(p[len("the "):]) for p in reversed(parts[:-1])]
            return Chain(world.names.index(parts[-1]), tuple(rels))
    for template in _CHAIN:
        rx = re.escape(template).replace(re.escape("{s}"), "(\\w+)").replace(re.escape("{path}"), "(.+)")
        m = re.fullmatch(rx, text)
        if m:
            rels = [world.relations.index(p[len("the "):]) for p in m.group(2).split(", then ")]
            return Chain(world.names.index(m.group(1)), tuple(rels))
    raise ValueError(f"not a hops query: {text!r}")
