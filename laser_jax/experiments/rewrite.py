"""Rewrite-then-retrieve: the baseline LaSER replaces. A language model writes the reasoning of
each query (greedy decoding), then the retriever's explicit view embeds query + that reasoning.

The LM's prompt is the query formatted exactly as the explicit view's prefix (what comes
before the reasoning in `laser_jax.data.formatting.explicit_text`: the retriever's query
template with the domain's instruction, chat-wrapped when the retriever was trained so); it
continues greedily (`laser_jax.model.generate.greedy_generate`) until EOS or
`max_new_tokens` (default: the longest gold reasoning of the task, in the LM's tokens, plus a
margin). The new tokens, without the stop token, are decoded to the reasoning string. The
retriever then scores as `laser_jax.experiments.explicit_upper` does with the gold reasoning
(queries: explicit view's v*; documents: the latent view), through the same code
(`explicit_upper.evaluate_explicit`).

Generated reasoning is cached per domain in `CACHE_DIR/<domain>.jsonl` ({"id", "key",
"reasoning"}; `key` names the LM, prompt and decoding settings), so several retrievers (the
ablation's seeds) share one generation.

    python -m laser_jax.experiments.rewrite --model=RUN --lm=HF_DIR --data=DIR [--output=R.json]
        [--cache_dir=DIR] [--max_new_tokens=N]
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Union

from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data.formatting import TextFormat
from laser_jax.data.jsonl import read_objects
from laser_jax.experiments.explicit_upper import evaluate_explicit, query_prefixes
from laser_jax.inference.encoder import default_dtype
from laser_jax.inference.evaluate import format_table, summarize, write_summary
from laser_jax.inference.load import LoadedModel, load_for_inference
from laser_jax.inference.reasoning import DEFAULT_MARGIN, default_max_new_tokens, generate_reasonings
from laser_jax.retrieval import bright

# ---------------------------------------------------------------------------------- cache
def lm_fingerprint(path: str) -> str:
    """A name of the LM directory's current contents: its path, config and weight files'
    sizes and modification times (a rewritten LM gets a new name); of a GGUF file, its path,
    size and modification time."""
    h = hashlib.sha256(os.path.abspath(path).encode())
    if os.path.isfile(path):
        st = os.stat(path)
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    for name in sorted(os.listdir(path)):
        if name == "config.json" or name.endswith(".safetensors"):
            st = os.stat(os.path.join(path, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_key(lm_tag: str, prompt: str, max_new_tokens: int, stop_id: Optional[int]) -> str:
    text = json.dumps([lm_tag, prompt, max_new_tokens, stop_id])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_cache(path: str) -> Dict[str, dict]:
    """{query id: row} of a cache file (empty when there is none)."""
    if not os.path.isfile(path):
        return {}
    return {str(row["id"]): row for _, row in read_objects(path)}


def write_cache(path: str, rows: Dict[str, dict]) -> None:
    """All rows, written to a temporary file then renamed (readers never see half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows.values():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def domain_reasonings(lm: LoadedModel, text_format: TextFormat, domain: bright.BrightDomain, *,
                      max_new_tokens: int, cache_path: Optional[str] = None, lm_tag: str = "",
                      batch_size: int = 16, max_prompt_length: int = 1024) -> List[str]:
    """The LM's reasoning for every query of `domain` (query_ids order), from the cache file
    when it holds a row of the same LM, prompt and settings, else generated (and cached)."""
    prompts = query_prefixes(text_format, lm.tokenizer, domain.queries, domain.require_instruction())
    keys = [cache_key(lm_tag, p, max_new_tokens, None) for p in prompts]
    cached = read_cache(cache_path) if cache_path else {}
    todo = [i for i, (q, k) in enumerate(zip(domain.query_ids, keys)) if cached.get(q, {}).get("key") != k]
    if todo:
        texts = generate_reasonings(lm, [prompts[i] for i in todo], max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, max_prompt_length=max_prompt_length)
        for i, text in zip(todo, texts):
            cached[domain.query_ids[i]] = {"id": domain.query_ids[i], "key": keys[i], "reasoning": text}
        if cache_path:
            write_cache(cache_path, cached)
    return [cached[q]["reasoning"] for q in domain.query_ids]


# ------------------------------------------------------------------------------ evaluation
def evaluate_rewrite_then_retrieve(model: Union[str, LoadedModel], lm: Union[str, LoadedModel], data_dir: str, *,
                                   domains: Optional[Sequence[str]] = None, max_new_tokens: Optional[int] = None,
                                   margin: int = DEFAULT_MARGIN, cache_dir: Optional[str] = None,
                                   lm_tag: Optional[str] = None, max_length: int = 1024, batch_size: int = 32,
                                   gen_batch_size: int = 16):
    """Score rewrite-then-retrieve on a BRIGHT-format directory.

    Args:
      model: the retriever: a training workdir, checkpoint or HF directory, or a LoadedModel.
      lm: the language model that writes the reasoning: an HF directory, a GGUF file or a LoadedModel.
      data_dir: a directory of domains (or one domain's directory).
      domains: names to evaluate (default all).
      max_new_tokens: the most generated tokens per query (default: `default_max_new_tokens`).
      margin: tokens added to the longest gold reasoning for the default.
      cache_dir: where `<domain>.jsonl` caches the generated reasoning (None: no cache).
      lm_tag: the LM's name in cache keys (default: `lm_fingerprint` of its directory;
        "in-memory" for a LoadedModel).
      max_length: tokens per prompt, explicit text and document.
      batch_size: encoding batch size; gen_batch_size: generation batch size.

    Returns:
      list of `laser_jax.inference.evaluate.DomainResult`, in domain order.
    """
    if lm_tag is None:
        lm_tag = lm_fingerprint(lm) if isinstance(lm, str) else "in-memory"
    retriever = load_for_inference(model, default_dtype()) if isinstance(model, str) else model
    lm = load_for_inference(lm, default_dtype()) if isinstance(lm, str) else lm
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(lm.tokenizer, data_dir, margin)

    def reasonings(domain: bright.BrightDomain, _directory: str) -> List[str]:
        cache = os.path.join(cache_dir, f"{domain.name}.jsonl") if cache_dir else None
        return domain_reasonings(lm, retriever.text_format, domain, max_new_tokens=max_new_tokens,
                                 cache_path=cache, lm_tag=lm_tag, batch_size=gen_batch_size,
                                 max_prompt_length=max_length)

    return evaluate_explicit(retriever, data_dir, reasonings, domains=domains, max_length=max_length,
                             batch_size=batch_size)


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "The retriever: training workdir, checkpoint or HF directory.", flag_values=FLAGS)
flags.DEFINE_string("lm", None, "The language model writing the reasoning (HF directory or GGUF file).", flag_values=FLAGS)
flags.DEFINE_string("data", None, "BRIGHT-format directory (or one domain's directory).", flag_values=FLAGS)
flags.DEFINE_string("output", "", "Write the summary JSON here.", flag_values=FLAGS)
flags.DEFINE_string("cache_dir", "", "Cache the generated reasoning in DIR/<domain>.jsonl.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 0, "Most generated tokens per query (0: the longest gold reasoning "
                     "+ --margin).", flag_values=FLAGS)
flags.DEFINE_integer("margin", DEFAULT_MARGIN, "Tokens beyond the longest gold reasoning.", flag_values=FLAGS)
flags.DEFINE_integer("max_length", 1024, "Max tokens per prompt / explicit text / document.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Encoding batch size.", flag_values=FLAGS)
flags.DEFINE_integer("gen_batch_size", 16, "Generation batch size.", flag_values=FLAGS)
define_help(FLAGS)


def run(f: flags.FlagValues) -> None:
    """Evaluates what the parsed flags describe; prints the table, writes --output."""
    if not f.model or not f.lm or not f.data:
        raise ValueError("--model, --lm and --data are required")
    results = evaluate_rewrite_then_retrieve(
        f.model, f.lm, f.data, max_new_tokens=f.max_new_tokens or None, margin=f.margin,
        cache_dir=f.cache_dir or None, max_length=f.max_length, batch_size=f.batch_size,
        gen_batch_size=f.gen_batch_size)
    print(format_table(results), flush=True)
    if f.output:
        write_summary(f.output, summarize(results))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
