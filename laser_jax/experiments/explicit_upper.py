"""The explicit view fed the gold reasoning, as a retriever: an upper bound for LaSER.

Each held-out query is formatted exactly as in training (query template with the domain's
instruction, chat wrapping when the model was trained with it), the gold reasoning of
`<domain>/reasoning.jsonl` is appended (`laser_jax.data.formatting.explicit_text`), the
model runs its explicit view (`laser_jax.method.views.explicit_view`: one pass with the EOS
embedding appended) and v* is the query embedding. Documents go through the latent view
(`LaserEncoder.encode_documents`), as at inference. Scoring is the project's BRIGHT
evaluation (`laser_jax.inference.evaluate.score_embeddings`). `evaluate_explicit` is that
scoring for any query-side reasoning (gold here; an LM's in `laser_jax.experiments.rewrite`).

    python -m laser_jax.experiments.explicit_upper --model=WORKDIR --data=EVAL_DIR [--output=R.json]
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from laser_jax.cli import run_cli
from laser_jax.data.formatting import explicit_text
from laser_jax.inference.encoder import LaserEncoder, default_dtype, encode_texts
from laser_jax.inference.evaluate import format_table, score_embeddings, summarize, write_summary
from laser_jax.inference.load import load_for_inference
from laser_jax.inference.reasoning import query_prefixes, read_reasoning
from laser_jax.method.views import explicit_view
from laser_jax.model.decoder import Decoder
from laser_jax.retrieval import bright

@functools.partial(jax.jit, static_argnames=("model", "eos_id"))
def encode_explicit(model: Decoder, variables, ids, mask, eos_id: int):
    """v* [B, D] float32 (the explicit view's EOS state) of a left-padded batch of explicit texts."""
    seg = jnp.zeros((ids.shape[0], 1), jnp.int32)  # only v* is needed
    return explicit_view(model, variables, ids, mask, seg, eos_id)[0]


class ExplicitEncoder:
    """Query + gold reasoning -> v* (the explicit view's EOS state), for one loaded model.

    Batches as LaserEncoder does (`laser_jax.inference.encoder.iter_batches`: length-sorted,
    bucketed, left-padded).

    Args:
      loaded: a `laser_jax.inference.load.LoadedModel` (e.g. from `load_for_inference`).
      eos_id: the token whose embedding the explicit view appends (default: the tokenizer's EOS).
    """

    def __init__(self, loaded, eos_id: Optional[int] = None):
        self.loaded = loaded
        self.eos_id = int(loaded.tokenizer.eos_token_id if eos_id is None else eos_id)
        self.model = Decoder(loaded.cfg)

    def texts(self, queries: Sequence[str], reasonings: Sequence[str], instruction: str) -> List[str]:
        """The explicit-view texts, formatted exactly as the training pipeline does."""
        prefixes = query_prefixes(self.loaded.text_format, self.loaded.tokenizer, queries, instruction)
        return [explicit_text(p, r, q) for p, q, r in zip(prefixes, queries, reasonings)]

    def encode(self, queries: Sequence[str], reasonings: Sequence[str], instruction: str,
               max_length: int = 1024, batch_size: int = 32) -> np.ndarray:
        """float32 [Q, D] L2-normalised v*, rows in input order."""
        if len(queries) != len(reasonings):
            raise ValueError(f"{len(queries)} queries but {len(reasonings)} reasonings")
        encode_fn = functools.partial(encode_explicit, self.model, self.loaded.variables, eos_id=self.eos_id)
        return encode_texts(self.loaded.tokenizer, self.texts(queries, reasonings, instruction), encode_fn,
                            self.loaded.cfg.hidden_size, max_length=max_length, batch_size=batch_size)


def domain_dir(data_dir: str, name: str) -> str:
    """The directory of domain `name` in `data_dir` (which may be that domain's directory)."""
    return data_dir if bright.is_domain_dir(data_dir) else os.path.join(data_dir, name)


# (domain, its directory) -> the query-side reasoning of each query, in domain.query_ids order
Reasonings = Callable[[bright.BrightDomain, str], List[str]]


def gold_reasonings(domain: bright.BrightDomain, directory: str) -> List[str]:
    """The gold reasoning (`<directory>/reasoning.jsonl`) of every query of `domain`."""
    gold = read_reasoning(directory)
    missing = [q for q in domain.query_ids if q not in gold]
    if missing:
        raise ValueError(f"{domain.name}: no gold reasoning for {len(missing)} queries (e.g. {missing[:3]})")
    return [gold[q] for q in domain.query_ids]


def evaluate_explicit(loaded, data_dir: str, reasonings: Reasonings, *,
                      domains: Optional[Sequence[str]] = None, max_length: int = 1024, batch_size: int = 32):
    """Score a retriever whose queries are its explicit view fed some reasoning.

    Queries: query + `reasonings(domain, directory)` through the explicit view (v*);
    documents: the latent view (`LaserEncoder.encode_documents`), as at inference.

    Args:
      loaded: the retriever (`LoadedModel`).
      data_dir: a BRIGHT-format directory of domains, or one domain's directory.
      reasonings: the query-side reasoning of each query (gold: `gold_reasonings`; written by
        a language model: `laser_jax.experiments.rewrite`).
      domains, max_length, batch_size: as in `evaluate_explicit_upper`.

    Returns:
      list of `DomainResult`, in domain order.
    """
    explicit = ExplicitEncoder(loaded)
    latent = LaserEncoder(loaded.cfg, loaded.variables, loaded.tokenizer, loaded.text_format,
                          loaded.num_thinking_steps)
    results = []
    for domain in bright.load_bright(data_dir, domains):
        instruction = domain.require_instruction()
        q_emb = explicit.encode(domain.queries, reasonings(domain, domain_dir(data_dir, domain.name)),
                                instruction, max_length, batch_size)
        d_emb = latent.encode_documents(domain.documents, max_length=max_length, batch_size=batch_size)
        results.append(score_embeddings(domain, q_emb, d_emb))
    return results


def evaluate_explicit_upper(model: str, data_dir: str, *, domains: Optional[Sequence[str]] = None,
                            max_length: int = 1024, batch_size: int = 32, loaded=None):
    """Score the explicit view fed the gold reasoning on a BRIGHT-format directory.

    Args:
      model: a training workdir, checkpoint or HF directory (ignored when `loaded` is given).
      data_dir: directory of domain sub-directories, each with reasoning.jsonl.
      domains: names to evaluate (default all).
      max_length: tokens per explicit text / document.
      batch_size: encoding batch size.
      loaded: an already loaded `LoadedModel` (tests, or to reuse one).

    Returns:
      list of `laser_jax.inference.evaluate.DomainResult`, in domain order.
    """
    if loaded is None:
        loaded = load_for_inference(model, default_dtype())
    return evaluate_explicit(loaded, data_dir, gold_reasonings, domains=domains, max_length=max_length,
                             batch_size=batch_size)


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Training workdir, checkpoint or HF directory.", flag_values=FLAGS)
flags.DEFINE_string("data", None, "BRIGHT-format directory with reasoning.jsonl per domain.", flag_values=FLAGS)
flags.DEFINE_string("output", "", "Write the summary JSON here.", flag_values=FLAGS)
flags.DEFINE_integer("max_length", 1024, "Max tokens per explicit text / document.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", flag_values=FLAGS)
flags.DEFINE_boolean("help", False, "Show this help.", flag_values=FLAGS, short_name="h")


def run(f: flags.FlagValues) -> None:
    """Evaluates what the parsed flags describe; prints the table, writes --output."""
    if not f.model or not f.data:
        raise ValueError("--model and --data are required")
    results = evaluate_explicit_upper(f.model, f.data, max_length=f.max_length, batch_size=f.batch_size)
    print(format_table(results), flush=True)
    if f.output:
        write_summary(f.output, summarize(results))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
