"""Greedy reasoning of a (pretrained) LM on the synthetic task, and its end-number accuracy.

Each query of a BRIGHT-format split (eval/ or dev/ of `laser_jax.data.synthetic`) is
formatted as the explicit view's prefix (`explicit_upper.query_prefixes`: the query template
with the domain's instruction, chat-wrapped when asked) and continued greedily up to EOS by
`experiments.rewrite.generate_reasonings` (the generation rewrite-then-retrieve uses; at most
`max_new` tokens: by default the split's longest gold reasoning + a margin). The LAST number
of the generated reasoning is the model's answer; it is right when it equals the chain's end
state (`<split>/<domain>/chains.jsonl` `states[-1]`).

    python -m laser_jax.experiments.lm_eval --model=DIR --split_dir=TASK/eval [--out=lm_eval.json]

"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data.formatting import TextFormat
from laser_jax.experiments import explicit_upper, rewrite
from laser_jax.inference.load import LoadedModel

NUMBER = re.compile(r"-?\d+")
MARGIN = 8  # tokens beyond the longest gold reasoning


@dataclasses.dataclass(frozen=True)
class SplitQuery:
    domain: str
    id: str
    query: str
    instruction: str
    reasoning: str  # gold reasoning ("" when the split has none)
    end_state: Optional[int]  # the chain's last state (None without chains.jsonl)


def _jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_split(split_dir: str) -> List[SplitQuery]:
    """Every query of a BRIGHT-format split with its instruction, gold reasoning and end state."""
    with open(os.path.join(split_dir, "domains.json"), encoding="utf-8") as f:
        domains = json.load(f)
    out = []
    for dom, instruction in domains.items():
        ddir = os.path.join(split_dir, dom)
        reasoning, chains = {}, {}
        if os.path.exists(os.path.join(ddir, "reasoning.jsonl")):
            reasoning = {r["id"]: r["reasoning"] for r in _jsonl(os.path.join(ddir, "reasoning.jsonl"))}
        if os.path.exists(os.path.join(ddir, "chains.jsonl")):
            chains = {c["id"]: c["states"][-1] for c in _jsonl(os.path.join(ddir, "chains.jsonl"))}
        for q in _jsonl(os.path.join(ddir, "queries.jsonl")):
            out.append(SplitQuery(dom, q["id"], q["query"], instruction, reasoning.get(q["id"], ""),
                                  chains.get(q["id"])))
    return out


def end_number(text: str) -> Optional[int]:
    """The last integer in `text` (the generator's reasoning ends with the end state), or None."""
    found = NUMBER.findall(text)
    return int(found[-1]) if found else None


def split_prompts(tokenizer, queries: Sequence[SplitQuery], text_format: TextFormat) -> List[str]:
    """The explicit view's prefix of each query (what its reasoning follows)."""
    return [explicit_upper.query_prefixes(text_format, tokenizer, [q.query], q.instruction)[0] for q in queries]


def score(queries: Sequence[SplitQuery], generated: Sequence[str]) -> Dict:
    """{"accuracy", "per_domain", "exact" (whole reasoning equals the gold), "n"} of
    generated reasoning against the queries' end states."""
    ok = np.array([end_number(g) == q.end_state for q, g in zip(queries, generated)], bool)
    exact = np.array([g == q.reasoning for q, g in zip(queries, generated)], bool)
    per = {}
    for dom in sorted({q.domain for q in queries}):
        idx = [i for i, q in enumerate(queries) if q.domain == dom]
        per[dom] = float(ok[idx].mean())
    return {"accuracy": float(ok.mean()) if len(ok) else 0.0, "per_domain": per,
            "exact": float(exact.mean()) if len(exact) else 0.0, "n": int(len(ok))}


def end_number_accuracy(lm: LoadedModel, split_dir: str, text_format: TextFormat = TextFormat(), *,
                        max_new: int = 0, batch_size: int = 128, examples: int = 3) -> Dict:
    """Greedy end-number accuracy of the language model `lm` on a split (module doc):
    score() plus "max_new" and a few "examples" ({query, generated, gold})."""
    queries = [q for q in load_split(split_dir) if q.end_state is not None]
    if not queries:
        raise FileNotFoundError(f"{split_dir}: no queries with chains.jsonl end states")
    max_new = max_new or rewrite.default_max_new_tokens(lm.tokenizer, split_dir, MARGIN)
    generated = rewrite.generate_reasonings(lm, split_prompts(lm.tokenizer, queries, text_format),
                                            max_new_tokens=max_new, batch_size=min(batch_size, len(queries)))
    result = score(queries, generated)
    result["max_new"] = int(max_new)
    result["examples"] = [{"query": q.query, "generated": g, "gold": q.reasoning}
                          for q, g in zip(queries[:examples], generated[:examples])]
    return result


def format_result(result: Dict) -> str:
    per = ", ".join(f"{d} {100 * a:.1f}" for d, a in result["per_domain"].items())
    return (f"greedy end-number accuracy {100 * result['accuracy']:.1f}% ({per}); exact reasoning "
            f"{100 * result['exact']:.1f}%; {result['n']} queries")


FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "HF directory, training workdir or checkpoint.", flag_values=FLAGS)
flags.DEFINE_string("split_dir", None, "BRIGHT-format split of the synthetic task (eval/ or dev/).",
                    flag_values=FLAGS)
flags.DEFINE_string("out", "", "Write the result as JSON here.", flag_values=FLAGS)
flags.DEFINE_integer("max_new", 0, "Most new tokens; 0 = the longest gold reasoning + a margin.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 128, "Queries per generation batch.", flag_values=FLAGS)
define_help(FLAGS)


def _command(f: flags.FlagValues) -> str:
    from laser_jax.inference.load import load_for_inference

    if not f.model or not f.split_dir:
        raise ValueError("--model and --split_dir are required")
    loaded = load_for_inference(f.model, "float32")
    result = end_number_accuracy(loaded, f.split_dir, loaded.text_format, max_new=f.max_new,
                                 batch_size=f.batch_size)
    if f.out:
        with open(f.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return format_result(result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, _command, argv)


if __name__ == "__main__":
    sys.exit(main())
