"""The hops task: relation hops over named entities, one token per reasoning step.

Design principle (issue 21): each reasoning step's decisive content is ONE token that one
forward pass can produce from the previous step's. A world of named entities, each name one
token of the task's tokenizer, and relations that are functions over them ("the mentor of
Bren is Cato"; hops_world.py). A query composes 2-4 relations from a start entity ("Find
passages about the mentor of the rival of the teacher of Alba."); the gold reasoning names
one intermediate entity per step (hops_text.py: reasoning formats); the relevant passages
describe the END entity, which the query never names; every entity has passages of its own
(so the trajectory loss scores intermediate states against real documents); hard negatives
are the entities that one wrong hop reaches. eval/ and dev/ hold compositions (start,
relations) never seen in training, while every single fact they use is taught: training
holds every 1-hop query (train_min_hops=1) and, with facts="weights", every fact sentence
is a text of the LM pretraining (lm_corpus.jsonl); with facts="query" the query lists the
facts it needs among distractors (the wrong-relation facts of the same entities, then random
ones), as graph-reasoning benchmarks of latent reasoning do.

Besides the common layout (layout.py; corpus.jsonl rows carry "entity", chains "start",
"relations" and "states" as names): facts.jsonl (every fact of the world: relation, subject,
object, content) and, with facts="weights", lm_corpus.jsonl (the passages and the fact
sentences: what the LM pretraining reads besides train.jsonl). meta.json also records the
entities, the relations and the facts' coverage.

Reasoning formats (hops_text.py; mean reasoning tokens per hop under the trained tokenizer,
meta.json token_lengths.reasoning_per_step) and what the tiny LM of configs/tiny.py:hops
(2 layers x 64, 1500 steps of 32 rows, facts in the weights) learned of each on dev/ (greedy
end-entity accuracy, seed 0, 2026-12-07): "pairs" (" teacher Cato\n\n rival Dara": the
relation, then the entity; 2.65 tokens) 100% with nested or chain queries; "sentences" (6.65
tokens, chain queries) 100%; "segments" (" Cato\n\n Dara": 1.65 tokens) 5.7% nested, 5.0%
chain; "names" (1 token) not tried. Without the relation written just before the entity the
2-layer LM does not learn to fetch each hop's relation from the query (even hop 1 is right
only 19% of the time teacher-forced, on training queries too). "pairs" is the default: the most
compact format it learned; the entity is still one token, predicted from the two before it.

With `tokenizer` (a Hugging Face tokenizer directory or a GGUF file, e.g. a real LLM's) no BPE
is trained: names are drawn from words that are one token of THAT tokenizer (with the space
before them), and tokenizer/ is that tokenizer (a GGUF file's saved as a directory).
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Dict, List

from transformers import AutoTokenizer

from laser_jax.data import bpe
import laser_jax.data.tasks.hops_text as text
from laser_jax.data.tasks.hops_world import Chain, World, facts_used, make_world, near_misses, sample_chains, states
from laser_jax.data.tasks.layout import SEGMENT_SEP, TaskData
from laser_jax.data.tasks.sampling import held_out_chains, random_negatives, train_chains

NAME = "hops"
VERSION = 1
LM_CORPUS_FILE = "lm_corpus.jsonl"
FACTS_FILE = "facts.jsonl"


@dataclasses.dataclass(frozen=True)
class Options:
    """Knobs of the hops generator (recorded in meta.json)."""
    num_entities: int = 40        # named entities, each described by passages
    num_relations: int = 4        # relations (the first of mentor, rival, teacher, neighbour, ...)
    min_hops: int = 2             # shortest evaluation chain
    max_hops: int = 4             # longest chain; one eval domain per length ("steps2", ...)
    train_min_hops: int = 1       # shortest training chain (1: every single fact is a training query)
    n_train: int = 4000           # training queries, lengths uniform over train_min..max
    n_eval_per_domain: int = 100  # evaluation queries per chain length
    n_dev_per_domain: int = 100   # development queries per chain length (0 = no dev/ split)
    docs_per_entity: int = 3      # passages per entity (all are positives of that entity)
    n_random_negatives: int = 2   # random other entities after the hard negatives
    facts: str = "weights"        # where the facts live: weights (LM pretraining texts) | query
    n_query_facts: int = 8        # facts listed in a query with facts=query (needed + distractors)
    reasoning_format: str = "pairs"  # pairs | segments | sentences | names (hops_text.py; module doc)
    query_style: str = "nested"   # nested ("the mentor of the rival of Alba") | chain
    paraphrase: bool = True       # vary the wording of queries
    vocab_size: int = 768         # trained tokenizer's vocabulary (names that BPE did not merge add theirs)
    tokenizer: str = ""           # a Hugging Face tokenizer directory (or GGUF file) to use instead of training one

    def __post_init__(self):
        if self.tokenizer:
            object.__setattr__(self, "tokenizer", os.path.abspath(self.tokenizer))
        checks = [
            (self.facts in text.FACTS, f"facts must be one of {text.FACTS}"),
            (self.reasoning_format in text.REASONING_FORMATS,
             f"reasoning_format must be one of {text.REASONING_FORMATS}"),
            (self.query_style in text.QUERY_STYLES, f"query_style must be one of {text.QUERY_STYLES}"),
            (2 <= self.num_relations <= len(text.RELATIONS), f"num_relations must be in 2..{len(text.RELATIONS)}"),
            (self.num_relations + 3 <= self.num_entities, "need num_entities >= num_relations + 3"),
            (self.tokenizer or self.num_entities <= len(text.NAMES), f"num_entities must be <= {len(text.NAMES)}"),
            (1 <= self.min_hops <= self.max_hops and 1 <= self.train_min_hops <= self.max_hops,
             "need 1 <= min_hops, train_min_hops <= max_hops"),
            (self.docs_per_entity >= 1, "docs_per_entity must be >= 1"),
            (self.n_eval_per_domain >= 1 and self.n_dev_per_domain >= 0,
             "need n_eval_per_domain >= 1 and n_dev_per_domain >= 0"),
            (self.facts != "query" or self.n_query_facts >= self.max_hops, "n_query_facts must be >= max_hops"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"hops task: {message}")


def given_tokenizer(path: str):
    """The tokenizer the `tokenizer` option names: a directory's, or a GGUF file's own
    (transformers' GGUF conversion, as laser_jax.model.gguf_io reads it)."""
    if path.lower().endswith(".gguf") and os.path.isfile(path):
        return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)


def entity_names(opts: Options, seed: int) -> List[str]:
    """The entities' names: drawn from hops_text.NAMES; with `tokenizer`, from the NAMES and
    GIVEN_NAMES that are one token of it (after a space), and when those are too few, also from
    its other one-token capitalised words of 4-7 letters (none a word of the task's own wording)."""
    rng = random.Random(f"{seed}/names")
    if not opts.tokenizer:
        return rng.sample(text.NAMES, opts.num_entities)
    words = [w.strip() for w in bpe.single_token_words(given_tokenizer(opts.tokenizer),
                                                       exclude=text.fixed_words())]
    preferred = [n for n in dict.fromkeys(text.NAMES + text.GIVEN_NAMES) if n in set(words)]
    if len(preferred) >= opts.num_entities:
        return rng.sample(preferred, opts.num_entities)
    others = [w for w in words if w not in set(preferred)]
    if len(preferred) + len(others) < opts.num_entities:
        raise ValueError(f"hops task: the tokenizer {opts.tokenizer} has {len(preferred) + len(others)} one-token "
                         f"capitalised words, fewer than num_entities={opts.num_entities}")
    return preferred + rng.sample(others, opts.num_entities - len(preferred))


def _chain_row(chain: Chain, world: World) -> dict:
    return {"start": world.names[chain.start], "relations": [world.relations[r] for r in chain.rels],
            "states": [world.names[x] for x in states(chain, world)]}


def _query_facts(chain: Chain, world: World, opts: Options, rng: random.Random) -> list:
    """(relation, subject) pairs listed in a facts=query query: the chain's own facts, one
    wrong-relation fact of each subject on the way, then random facts; shuffled."""
    if opts.facts != "query":
        return []
    chosen = [(r, a) for r, a, _ in facts_used(chain, world)]
    for r, a in list(chosen):
        if len(chosen) < opts.n_query_facts:
            chosen.append((rng.choice([o for o in range(len(world.relations)) if o != r and (o, a) not in chosen]), a))
    while len(chosen) < opts.n_query_facts:
        fact = (rng.randrange(len(world.relations)), rng.randrange(len(world.names)))
        if fact not in chosen:
            chosen.append(fact)
    rng.shuffle(chosen)
    return chosen


def _query(chain: Chain, world: World, opts: Options, rng: random.Random) -> str:
    facts = _query_facts(chain, world, opts, rng)
    return text.render_query(chain, world, rng, paraphrase=opts.paraphrase, style=opts.query_style, facts=facts)


def _train_records(opts: Options, world: World, chains: List[Chain], rng: random.Random, by_entity, instr: str):
    train, train_meta = [], []
    for chain in chains:
        end = states(chain, world)[-1]
        misses = near_misses(chain, world, rng)
        randoms = random_negatives(rng, end, {m.end for m in misses}, len(world.names), opts.n_random_negatives)
        positives = [d["content"] for d in by_entity[end]]
        rng.shuffle(positives)
        train.append({"query": _query(chain, world, opts, rng), "prompt": instr,
                      "reasoning_query": text.render_reasoning(chain, world, opts.reasoning_format),
                      "positive_passages": positives,
                      "negative_passages": [rng.choice(by_entity[x])["content"]
                                            for x in [m.end for m in misses] + randoms]})
        row = _chain_row(chain, world)
        row["near_misses"] = [{"step": m.step, "relation": world.relations[m.rel], "end": world.names[m.end]}
                              for m in misses]
        row["random_negatives"] = [world.names[x] for x in randoms]
        train_meta.append(row)
    return train, train_meta


def _split(chains_by_length, rng: random.Random, opts: Options, world: World, by_entity, prefix: str = "") -> Dict:
    domains = {}
    for n, chains in chains_by_length.items():
        queries, reasoning, chain_rows = [], [], []
        for i, chain in enumerate(chains):
            qid = f"{prefix}steps{n}-{i:04d}"
            end = states(chain, world)[-1]
            queries.append({"id": qid, "query": _query(chain, world, opts, rng),
                            "gold_ids": [d["id"] for d in by_entity[end]], "excluded_ids": []})
            reasoning.append({"id": qid, "reasoning": text.render_reasoning(chain, world, opts.reasoning_format)})
            chain_rows.append({"id": qid, **_chain_row(chain, world)})
        domains[f"steps{n}"] = {"queries": queries, "reasoning": reasoning, "chains": chain_rows}
    return domains


def _facts_rows(world: World) -> List[dict]:
    return [{"id": f"f{r}_{x}", "relation": world.relations[r], "subject": world.names[x],
             "object": world.names[world.table[r][x]], "content": text.fact_sentence(world, r, x)}
            for r in range(len(world.relations)) for x in range(len(world.names))]


def _coverage(world: World, train_chains, held_out) -> dict:
    """How many facts the world has, how many the training queries use, and how many of the
    held-out chains' facts no training query uses."""
    taught = {(r, a) for c in train_chains for r, a, _ in facts_used(c, world)}
    needed = {(r, a) for chains in held_out for c in chains for r, a, _ in facts_used(c, world)}
    return {"total": len(world.names) * len(world.relations), "in_train_queries": len(taught),
            "held_out_not_in_train_queries": len(needed - taught)}


def build(opts: Options, seed: int) -> TaskData:
    """All records in memory (no I/O besides reading a given tokenizer)."""
    names = entity_names(opts, seed)
    world = make_world(names, text.RELATIONS[:opts.num_relations], random.Random(f"{seed}/world"))
    corpus = text.passages(world, opts.docs_per_entity, random.Random(f"{seed}/docs"))
    by_entity = [[d for d in corpus if d["entity"] == name] for name in world.names]
    instr = text.instruction(opts.facts)
    eval_chains, dev_chains, rng_eval, rng_dev = held_out_chains(
        seed, range(opts.min_hops, opts.max_hops + 1), opts.n_eval_per_domain, opts.n_dev_per_domain, world,
        sample_chains)
    rng_train = random.Random(f"{seed}/train")
    chains = train_chains(rng_train, opts.n_train, range(opts.train_min_hops, opts.max_hops + 1), world,
                          sample_chains, (eval_chains, dev_chains))
    train, train_meta = _train_records(opts, world, chains, rng_train, by_entity, instr)
    facts = _facts_rows(world)
    weights = opts.facts == "weights"
    extra = {FACTS_FILE: facts}
    if weights:
        extra[LM_CORPUS_FILE] = [{"id": d["id"], "content": d["content"]} for d in corpus + facts]
    coverage = _coverage(world, chains, list(eval_chains.values()) + list(dev_chains.values()))
    coverage["in_lm_texts"] = len(facts) if weights else 0
    return TaskData(
        instruction=instr, corpus=corpus, train=train, train_meta=train_meta,
        domains=_split(eval_chains, rng_eval, opts, world, by_entity),
        dev=_split(dev_chains, rng_dev, opts, world, by_entity, "dev-"),
        extra_files=extra, lm_extra_texts=[f["content"] for f in facts] if weights else [],
        meta={"answer": {"kind": "entity", "pattern": text.answer_pattern(world.names)},
              "lm_corpus": LM_CORPUS_FILE if weights else "corpus.jsonl",
              "entities": list(world.names), "relations": list(world.relations), "facts": coverage})


def tokenizer_writer(opts: Options, data: TaskData):
    """save_tokenizer(texts, dir) for layout.write: the given tokenizer, or a BPE trained on the
    explicit texts, the passages and the LM's fact sentences with every name (and "\\n\\n") one
    token; then
    checked: each name (after a space, and after "\\n\\n") is one token."""
    names = data.meta["entities"]

    def save(texts: Dict[str, list], out_dir: str) -> None:
        if opts.tokenizer:
            given_tokenizer(opts.tokenizer).save_pretrained(out_dir)
        else:
            bpe.save_tokenizer(texts["explicit"] + texts["document"] + texts["extra"], out_dir, opts.vocab_size,
                               single_tokens=[SEGMENT_SEP] + [" " + n for n in names])
        check_single_tokens(AutoTokenizer.from_pretrained(out_dir), names)
    return save


def check_single_tokens(tok, names) -> None:
    """ValueError naming the first entity name that is not one token after a space or after
    the segment separator."""
    sep = tok.encode(SEGMENT_SEP, add_special_tokens=False)
    for name in names:
        ids = tok.encode(" " + name, add_special_tokens=False)
        if len(ids) != 1 or tok.encode(SEGMENT_SEP + " " + name, add_special_tokens=False) != sep + ids:
            raise ValueError(f"hops task: the entity name {name!r} is not one token of the tokenizer "
                             f"(' {name}' -> {ids})")
