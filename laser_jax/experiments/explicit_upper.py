"""The explicit view fed the gold reasoning, as a retriever: an upper bound for LaSER.

Each held-out query is formatted exactly as in training (query template with the domain's
instruction, chat wrapping when the model was trained with it), the gold reasoning of
`<domain>/reasoning.jsonl` is appended (`laser_jax.data.formatting.explicit_text`), the
model runs its explicit view (`laser_jax.method.views.explicit_view`: one pass with the EOS
embedding appended) and v* is the query embedding. Documents go through the latent view
(`LaserEncoder.encode_documents`), as at inference. Scoring is the project's BRIGHT
evaluation (`laser_jax.evaluate.score_embeddings`).

    python -m laser_jax.experiments.explicit_upper --model=WORKDIR --data=EVAL_DIR [--output=R.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.inference.encoder import LaserEncoder
from laser_jax.method.views import explicit_view

REASONING_FILE = "reasoning.jsonl"


def read_reasoning(domain_dir: str) -> Dict[str, str]:
    """{query id: gold reasoning} from `<domain_dir>/reasoning.jsonl`."""
    path = os.path.join(domain_dir, REASONING_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no gold reasoning for this domain")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row.get("id"), str) or not isinstance(row.get("reasoning"), str):
                    raise ValueError(f"{path}:{line_no}: need string fields 'id' and 'reasoning'")
                out[row["id"]] = row["reasoning"]
    return out


class _ExplicitViewBatches(LaserEncoder):
    """LaserEncoder's batching (length-sorted, bucketed, left-padded) with v* per batch."""

    def __init__(self, loaded, eos_id: int):
        super().__init__(loaded.cfg, loaded.variables, loaded.tokenizer, loaded.text_format,
                         loaded.num_thinking_steps)
        self.eos_id = eos_id

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _encode_batch(self, variables, ids, mask, num_steps):
        seg = jnp.zeros((ids.shape[0], 1), jnp.int32)  # only v* is needed
        return explicit_view(self.model, variables, ids, mask, seg, self.eos_id)[0]


class ExplicitEncoder:
    """Query + gold reasoning -> v* (the explicit view's EOS state), for one loaded model.

    Args:
      loaded: a `laser_jax.inference.load.LoadedModel` (e.g. from `load_for_inference`).
      eos_id: the token whose embedding the explicit view appends (default: the tokenizer's EOS).
    """

    def __init__(self, loaded, eos_id: Optional[int] = None):
        self.loaded = loaded
        self.eos_id = int(loaded.tokenizer.eos_token_id if eos_id is None else eos_id)
        self._batches = _ExplicitViewBatches(loaded, self.eos_id)

    def texts(self, queries: Sequence[str], reasonings: Sequence[str], instruction: str) -> List[str]:
        """The explicit-view texts, formatted exactly as the training pipeline does."""
        from laser_jax.data.formatting import chat_wrap, explicit_text, format_query

        fmt, tok = self.loaded.text_format, self.loaded.tokenizer
        out = []
        for q, r in zip(queries, reasonings):
            text = format_query(fmt.query_template, instruction, q)
            if fmt.chat_template:
                text = chat_wrap(tok, text)
            out.append(explicit_text(text, r, q))
        return out

    def encode(self, queries: Sequence[str], reasonings: Sequence[str], instruction: str,
               max_length: int = 1024, batch_size: int = 32) -> np.ndarray:
        """float32 [Q, D] L2-normalised v*, rows in input order."""
        if len(queries) != len(reasonings):
            raise ValueError(f"{len(queries)} queries but {len(reasonings)} reasonings")
        return self._batches.encode(self.texts(queries, reasonings, instruction), max_length=max_length,
                                    batch_size=batch_size)


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
      list of `laser_jax.evaluate.DomainResult`, in domain order.
    """
    from laser_jax.inference.encoder import default_dtype
    from laser_jax.inference.evaluate import score_embeddings
    from laser_jax.inference.load import load_for_inference
    from laser_jax.retrieval import bright

    if loaded is None:
        loaded = load_for_inference(model, default_dtype())
    explicit = ExplicitEncoder(loaded)
    latent = LaserEncoder(loaded.cfg, loaded.variables, loaded.tokenizer, loaded.text_format,
                          loaded.num_thinking_steps)
    results = []
    for domain in bright.load_bright(data_dir, domains):
        instruction = domain.require_instruction()
        gold = read_reasoning(os.path.join(data_dir, domain.name) if not bright.is_domain_dir(data_dir)
                              else data_dir)
        missing = [q for q in domain.query_ids if q not in gold]
        if missing:
            raise ValueError(f"{domain.name}: no gold reasoning for {len(missing)} queries (e.g. {missing[:3]})")
        q_emb = explicit.encode(domain.queries, [gold[q] for q in domain.query_ids], instruction,
                                max_length, batch_size)
        d_emb = latent.encode_documents(domain.documents, max_length=max_length, batch_size=batch_size)
        results.append(score_embeddings(domain, q_emb, d_emb))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="training workdir, checkpoint or HF directory")
    parser.add_argument("--data", required=True, help="BRIGHT-format directory with reasoning.jsonl per domain")
    parser.add_argument("--output", default="", help="write the summary JSON here")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)
    from laser_jax.inference.evaluate import format_table, summarize

    results = evaluate_explicit_upper(args.model, args.data, max_length=args.max_length,
                                      batch_size=args.batch_size)
    print(format_table(results), flush=True)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(summarize(results), f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
