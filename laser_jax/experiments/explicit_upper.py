"""The explicit view fed the gold reasoning, as a retriever: an upper bound for LaSER.

Each held-out query is formatted exactly as in training (query template with the domain's
instruction, chat wrapping when the model was trained with it), the gold reasoning of
`<domain>/reasoning.jsonl` is appended (`laser_jax.data.formatting.explicit_text`), the
model runs its explicit view (`laser_jax.laser.explicit_view`: one pass with the EOS
embedding appended) and v* is the query embedding. Documents go through the latent view
(`LaserEncoder.encode_documents`), as at inference. Scoring is the project's BRIGHT
evaluation (`laser_jax.evaluate.score_embeddings`).

    python -m laser_jax.experiments.explicit_upper --model=WORKDIR --data=EVAL_DIR [--output=R.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

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


class ExplicitEncoder:
    """Query + gold reasoning -> v* (the explicit view's EOS state), for one loaded model.

    Args:
      loaded: a `laser_jax.model_io.LoadedModel` (e.g. from `load_for_inference`).
      eos_id: the token whose embedding the explicit view appends (default: the tokenizer's EOS).
    """

    def __init__(self, loaded, eos_id: Optional[int] = None):
        import jax

        from laser_jax.laser import explicit_view
        from laser_jax.model.decoder import Decoder

        self.loaded = loaded
        self.model = Decoder(loaded.cfg)
        self.eos_id = int(loaded.tokenizer.eos_token_id if eos_id is None else eos_id)

        @jax.jit
        def encode(variables, ids, mask):
            import jax.numpy as jnp

            seg = jnp.zeros((ids.shape[0], 1), jnp.int32)  # only v* is needed
            return explicit_view(self.model, variables, ids, mask, seg, self.eos_id)[0]

        self._encode = encode

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
        import jax

        from laser_jax.data.tokenize import Bucketing, left_pad, pad_token_id, tokenize_texts

        if len(queries) != len(reasonings):
            raise ValueError(f"{len(queries)} queries but {len(reasonings)} reasonings")
        rows = tokenize_texts(self.loaded.tokenizer, self.texts(queries, reasonings, instruction), max_length)
        order = np.argsort([-len(r) for r in rows], kind="stable")
        pad, bucketing = pad_token_id(self.loaded.tokenizer), Bucketing()
        out = np.zeros((len(rows), self.loaded.cfg.hidden_size), np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = [rows[i] for i in idx] + [[]] * (batch_size - len(idx))
            ids, mask = left_pad(batch, bucketing.length(max(len(r) for r in batch), max_length), pad)
            emb = self._encode(self.loaded.variables, ids, mask)
            out[idx] = np.asarray(jax.device_get(emb), np.float32)[:len(idx)]
        return out


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
    from laser_jax.encoder import LaserEncoder, default_dtype
    from laser_jax.evaluate import score_embeddings
    from laser_jax.model_io import load_for_inference
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
    from laser_jax.evaluate import format_table, summarize

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
