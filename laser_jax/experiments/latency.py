"""The paper's efficiency table: retrieval-side time per query on this machine.

For one retriever (and, for rewrite-then-retrieve, one language model), from the formatted
query text to its embedding (tokenizing, padding, the device work and the copy back):

  basic                   one latent pass at K=1 (an ordinary last-token retriever)
  laser                   the latent view at the model's K (K-1 soft steps after the prefill)
  rewrite_then_retrieve   the LM's greedy reasoning (`laser_jax.experiments.rewrite`), decoded,
                          then the explicit view over query + reasoning

at batch 1 and batch 64 (queries of the data directory, cycled). Each measurement runs once
to compile (warm-up), then `repeats` times; the median batch time / batch size is the
per-query time.

    python -m laser_jax.experiments.latency --model=RUN --data=DIR [--lm=HF_DIR] [--output=L.json]
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data.formatting import explicit_text
from laser_jax.experiments.explicit_upper import encode_explicit, query_prefixes
from laser_jax.experiments.rewrite import DEFAULT_MARGIN, default_max_new_tokens, generate_reasonings
from laser_jax.inference.encoder import default_dtype, encode_latent, encode_texts
from laser_jax.inference.load import LoadedModel, load_for_inference
from laser_jax.model.decoder import Decoder
from laser_jax.retrieval import bright

VARIANTS = ("basic", "laser", "rewrite_then_retrieve")
BATCH_SIZES = (1, 64)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call (compiling)."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def variant_fns(retriever: LoadedModel, lm: Optional[LoadedModel], queries: Sequence[Tuple[str, str]], *,
                max_new_tokens: int, max_length: int) -> Dict[str, Callable[[], object]]:
    """{variant: fn()} embedding all `queries` ((query, instruction) pairs) in one batch."""
    tok, fmt, dim = retriever.tokenizer, retriever.text_format, retriever.cfg.hidden_size
    model, n = Decoder(retriever.cfg), len(queries)
    prefixes = [query_prefixes(fmt, tok, [q], i)[0] for q, i in queries]

    def latent(steps):
        fn = functools.partial(encode_latent, model, retriever.variables, num_steps=steps)
        return lambda: encode_texts(tok, prefixes, fn, dim, max_length=max_length, batch_size=n)

    fns = {"basic": latent(1), "laser": latent(retriever.num_thinking_steps)}
    if lm is not None:
        prompts = [query_prefixes(fmt, lm.tokenizer, [q], i)[0] for q, i in queries]
        explicit = functools.partial(encode_explicit, model, retriever.variables,
                                     eos_id=int(tok.eos_token_id))

        def rewrite_then_retrieve():
            reasonings = generate_reasonings(lm, prompts, max_new_tokens=max_new_tokens, batch_size=n,
                                             max_prompt_length=max_length)
            texts = [explicit_text(p, r, q) for p, r, (q, _) in zip(prefixes, reasonings, queries)]
            return encode_texts(tok, texts, explicit, dim, max_length=max_length, batch_size=n)

        fns["rewrite_then_retrieve"] = rewrite_then_retrieve
    return fns


def measure_latency(retriever: LoadedModel, lm: Optional[LoadedModel], queries: Sequence[Tuple[str, str]], *,
                    max_new_tokens: int, batch_sizes: Sequence[int] = BATCH_SIZES, repeats: int = 5,
                    max_length: int = 512, timer: Callable[[Callable[[], object], int], float] = median_seconds
                    ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per-query retrieval time of basic, laser and (with an LM) rewrite-then-retrieve.

    Args:
      retriever: the retriever (its own K for `laser`, K=1 for `basic`).
      lm: the language model of rewrite-then-retrieve (None: that row is left out).
      queries: (query, instruction) pairs, cycled to fill each batch.
      max_new_tokens: the most tokens the LM writes per query.
      batch_sizes: the batch sizes measured (key "batch<b>").
      repeats: timed calls after the warm-up.
      max_length: token truncation length.
      timer: (fn, repeats) -> seconds of one call (default: median after a warm-up).

    Returns:
      {variant: {"batch<b>": {"ms_per_query", "ratio_to_basic"}}} (ratio = this variant's time
      over basic's at the same batch size).
    """
    if not queries:
        raise ValueError("no queries to time")
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for b in batch_sizes:
        batch = [queries[i % len(queries)] for i in range(b)]
        fns = variant_fns(retriever, lm, batch, max_new_tokens=max_new_tokens, max_length=max_length)
        ms = {v: 1000.0 * timer(fn, repeats) / b for v, fn in fns.items()}
        for v, value in ms.items():
            out.setdefault(v, {})[f"batch{b}"] = {"ms_per_query": value, "ratio_to_basic": value / ms["basic"]}
    return out


def data_queries(data_dir: str) -> List[Tuple[str, str]]:
    """(query, instruction) of every query of every domain of `data_dir`, in domain order."""
    return [(q, d.require_instruction()) for d in bright.load_bright(data_dir) for q in d.queries]


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "The retriever: training workdir, checkpoint or HF directory.", flag_values=FLAGS)
flags.DEFINE_string("lm", "", "Language model for rewrite-then-retrieve (HF directory; empty: that row is "
                    "left out).", flag_values=FLAGS)
flags.DEFINE_string("data", None, "BRIGHT-format directory whose queries are timed.", flag_values=FLAGS)
flags.DEFINE_string("output", "", "Write the latency JSON here.", flag_values=FLAGS)
flags.DEFINE_list("batch_sizes", [str(b) for b in BATCH_SIZES], "Batch sizes measured.", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed calls after the warm-up (the median is reported).", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 0, "Most generated tokens per query (0: the longest gold reasoning "
                     "+ --margin).", flag_values=FLAGS)
flags.DEFINE_integer("margin", DEFAULT_MARGIN, "Tokens beyond the longest gold reasoning.", flag_values=FLAGS)
flags.DEFINE_integer("max_length", 512, "Token truncation length.", flag_values=FLAGS)
define_help(FLAGS)


def format_latency(latency: dict) -> str:
    """A plain-text table: variant, ms/query and ratio to basic per batch size."""
    keys = list(next(iter(latency.values())))
    lines = ["variant".ljust(24) + "".join(f"{k + ' ms/q':>16}{'x basic':>10}" for k in keys)]
    for v, row in latency.items():
        lines.append(v.ljust(24) + "".join(f"{row[k]['ms_per_query']:>16.3f}{row[k]['ratio_to_basic']:>10.2f}"
                                           for k in keys))
    return "\n".join(lines)


def run(f: flags.FlagValues) -> None:
    """Measures what the parsed flags describe; prints the table, writes --output."""
    if not f.model or not f.data:
        raise ValueError("--model and --data are required")
    retriever = load_for_inference(f.model, default_dtype())
    lm = load_for_inference(f.lm, default_dtype()) if f.lm else None
    max_new = f.max_new_tokens or (default_max_new_tokens(lm.tokenizer, f.data, f.margin) if lm else 0)
    latency = measure_latency(retriever, lm, data_queries(f.data), max_new_tokens=max_new,
                              batch_sizes=[int(b) for b in f.batch_sizes], repeats=f.repeats,
                              max_length=f.max_length)
    print(format_latency(latency), flush=True)
    if f.output:
        os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        with open(f.output, "w", encoding="utf-8") as out:
            json.dump(latency, out, indent=2)
            out.write("\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
