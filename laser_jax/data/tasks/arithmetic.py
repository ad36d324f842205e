"""The arithmetic task: multi-step arithmetic retrieval over numbers (the embedded default).

A query gives a start number and 2-4 operations ("Start with 7. Add 3, then double it,
then subtract 4."); the relevant passages describe the END number, which no token of the
query names. The gold reasoning writes one step per "\\n\\n" segment
("7 plus 3 is 10\\n\\n10 doubled is 20\\n\\n20 minus 4 is 16"), every intermediate state is
itself described by passages of the corpus (so LaSER's trajectory loss, which scores the
explicit view's state at each segment end against the documents, supervises real
intermediate states), and hard negatives are near misses: the end reached when exactly one
operation is replaced by a plausible mistake. Evaluation chains (start, operations) never
occur in training; training also holds single operations (train_min_steps=1). A development
split (dev/, same format and lengths as eval/) holds further chains that occur neither in
training nor in the evaluation set: tune on dev/, report on eval/.

By default numbers stay inside 0..size-1 (chains leaving it are not drawn), so the start
number carries coarse information about the answer and a model trained from scratch gets a
gradient early; exact retrieval needs every step. With wrap=True the arithmetic is modulo
size: then no single token correlates with the answer, and in calibration runs (tiny Qwen3
trained from scratch, 2-4 layers, ~2000 steps) the latent view never left chance.

One arithmetic step costs about eight reasoning tokens ("33 minus 2 is 31" with digits
split), more than one soft step carries: the hops task (hops.py) is the one-token-per-step
alternative. The files are laid out by layout.py; corpus.jsonl rows carry "number".
"""
from __future__ import annotations

import dataclasses
import random
from typing import Dict, List

from laser_jax.data import bpe
from laser_jax.data.tasks.arithmetic_chains import Chain, World, make_world, near_misses, sample_chains, states
from laser_jax.data.tasks.arithmetic_docs import build_corpus
from laser_jax.data.tasks.arithmetic_text import instruction, render_query, render_reasoning
from laser_jax.data.tasks.layout import TaskData
from laser_jax.data.tasks.sampling import held_out_chains, random_negatives, train_chains

NAME = "arithmetic"
VERSION = 2  # 2: dev/ split (its chains are also held out of training)


@dataclasses.dataclass(frozen=True)
class Options:
    """Knobs of the generator; defaults are the embedded default task."""
    size: int = 50               # numbers 0..size-1, each described by passages
    wrap: bool = False           # arithmetic modulo size; else chains stay inside 0..size-1
    min_steps: int = 2           # shortest evaluation chain (operations per query)
    max_steps: int = 4           # longest chain; one eval domain per length
    train_min_steps: int = 1     # shortest training chain (1: single operations are taught too)
    max_operand: int = 5         # add / subtract 1..max_operand
    multiply: bool = True        # also "double it" and "triple it"
    n_train: int = 4000          # training queries, lengths uniform over train_min..max
    n_eval_per_domain: int = 100  # evaluation queries per chain length
    n_dev_per_domain: int = 100  # development queries per chain length (0 = no dev/ split)
    docs_per_number: int = 3     # passages per number (all are positives of that number)
    n_random_negatives: int = 2  # random other numbers after the hard negatives
    paraphrase: bool = True      # vary the wording of queries
    vocab_size: int = 768        # tokenizer vocabulary (incl. 256 bytes and special tokens)

    def __post_init__(self):
        if not 2 <= self.size <= 999:
            raise ValueError("size must be in 2..999")
        if not 1 <= self.min_steps <= self.max_steps or not 1 <= self.train_min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps, train_min_steps <= max_steps")
        if self.max_operand < 1 or self.docs_per_number < 1:
            raise ValueError("max_operand and docs_per_number must be >= 1")
        if self.n_eval_per_domain < 1 or self.n_dev_per_domain < 0:
            raise ValueError("need n_eval_per_domain >= 1 and n_dev_per_domain >= 0")


def _chain_row(chain: Chain, world: World) -> dict:
    return {"start": chain.start, "ops": [[op.kind, op.k] for op in chain.ops],
            "states": states(chain, world)}


def _train_records(opts: Options, world: World, chains: List[Chain], rng: random.Random, by_number, instr: str):
    train, train_meta = [], []
    for chain in chains:
        end = states(chain, world)[-1]
        misses = near_misses(chain, world, rng)
        randoms = random_negatives(rng, end, {m.end for m in misses}, opts.size, opts.n_random_negatives)
        positives = [d.content for d in by_number[end]]
        rng.shuffle(positives)
        train.append({
            "query": render_query(chain, rng, opts.paraphrase),
            "prompt": instr,
            "reasoning_query": render_reasoning(chain, world),
            "positive_passages": positives,
            "negative_passages": [rng.choice(by_number[x]).content for x in [m.end for m in misses] + randoms],
        })
        row = _chain_row(chain, world)
        row["near_misses"] = [{"step": m.step, "op": [m.op.kind, m.op.k], "end": m.end} for m in misses]
        row["random_negatives"] = randoms
        train_meta.append(row)
    return train, train_meta


def _split(chains_by_length, rng: random.Random, opts: Options, world: World, by_number, prefix: str = "") -> Dict:
    domains = {}
    for n, chains in chains_by_length.items():
        queries, reasoning, chain_rows = [], [], []
        for i, chain in enumerate(chains):
            qid = f"{prefix}steps{n}-{i:04d}"
            end = states(chain, world)[-1]
            queries.append({"id": qid, "query": render_query(chain, rng, opts.paraphrase),
                            "gold_ids": [d.id for d in by_number[end]], "excluded_ids": []})
            reasoning.append({"id": qid, "reasoning": render_reasoning(chain, world)})
            chain_rows.append({"id": qid, **_chain_row(chain, world)})
        domains[f"steps{n}"] = {"queries": queries, "reasoning": reasoning, "chains": chain_rows}
    return domains


def build(opts: Options, seed: int) -> TaskData:
    """All records in memory (no I/O)."""
    world = make_world(opts.size, opts.wrap, opts.max_operand, opts.multiply)
    corpus = build_corpus(opts.size, opts.wrap, opts.docs_per_number, random.Random(f"{seed}/docs"))
    by_number = [[d for d in corpus if d.number == n] for n in range(opts.size)]
    instr = instruction(world)
    eval_chains, dev_chains, rng_eval, rng_dev = held_out_chains(
        seed, range(opts.min_steps, opts.max_steps + 1), opts.n_eval_per_domain, opts.n_dev_per_domain, world,
        sample_chains)
    rng_train = random.Random(f"{seed}/train")
    chains = train_chains(rng_train, opts.n_train, range(opts.train_min_steps, opts.max_steps + 1), world,
                          sample_chains, (eval_chains, dev_chains))
    train, train_meta = _train_records(opts, world, chains, rng_train, by_number, instr)
    return TaskData(
        instruction=instr,
        corpus=[{"id": d.id, "number": d.number, "content": d.content} for d in corpus],
        train=train, train_meta=train_meta,
        domains=_split(eval_chains, rng_eval, opts, world, by_number),
        dev=_split(dev_chains, rng_dev, opts, world, by_number, "dev-"))


def tokenizer_writer(opts: Options, data: TaskData):
    """save_tokenizer(texts, dir) for layout.write: a BPE trained on the explicit texts and
    the passages (`data` is not needed)."""
    del data

    def save(texts: Dict[str, list], out_dir: str) -> None:
        bpe.save_tokenizer(texts["explicit"] + texts["document"], out_dir, opts.vocab_size)
    return save
