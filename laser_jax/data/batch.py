"""Build one training batch (the interface of docs/architecture.md) from records.

Texts: query = template(prompt, query), chat-wrapped if asked; documents likewise wrapped
(no prefix); explicit = wrapped query + reasoning (or the raw query when the reasoning
is shorter than 5 characters). Each view is tokenized in one batched call, right
truncated, left padded to its length bucket. Segment positions use, as the query length,
the real-token count of the latent-view query row (after its truncation).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from laser_jax.data.formatting import chat_wrap, explicit_text, format_document, format_query
from laser_jax.data.options import PipelineOptions
from laser_jax.data.records import Record
from laser_jax.data.segments import segment_positions_batch
from laser_jax.data.tokenize import tokenize_batch


def build_batch(records: Sequence[Record], documents: Sequence[Sequence[str]],
                indices: Sequence[int], tokenizer, options: PipelineOptions,
                split_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """Tokenized training batch of B queries.

    Args:
      records: B records.
      documents: B tuples of G passages (positive first), e.g. from `choose_documents`.
      indices: B source indices of the records (returned as `record`).
      tokenizer: Hugging Face tokenizer.
      options: lengths, template, chat wrapping, J, segment rule, bucketing.
      split_ids: int32 segment-ending ids (`split_token_ids`).

    Returns:
      dict of int32 numpy arrays: q_ids, q_mask [B, Lq]; d_ids, d_mask [B*G, Ld] (query i's
      positive at row i*G); e_ids, e_mask [B, Le]; e_seg [B, J]; record [B].
    """
    if any(len(group) != options.group_size for group in documents):
        raise ValueError(f"every query needs exactly group_size={options.group_size} documents")
    chat = options.chat_template
    queries = [format_query(options.query_template, r.prompt, r.query) for r in records]
    if chat:
        queries = [chat_wrap(tokenizer, q) for q in queries]
    docs = [format_document(d, chat, tokenizer) for group in documents for d in group]
    explicit = [explicit_text(q, r.reasoning, r.query) for q, r in zip(queries, records)]
    bucketing = options.bucketing
    q_ids, q_mask = tokenize_batch(tokenizer, queries, options.query_max_len, bucketing)
    d_ids, d_mask = tokenize_batch(tokenizer, docs, options.doc_max_len, bucketing)
    e_ids, e_mask = tokenize_batch(tokenizer, explicit, options.explicit_max_len, bucketing)
    e_seg = segment_positions_batch(e_ids, e_mask, q_mask.sum(axis=1), split_ids,
                                    options.num_thinking_steps, options.segment_rule)
    return {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask,
            "e_ids": e_ids, "e_mask": e_mask, "e_seg": e_seg,
            "record": np.asarray(indices, np.int32)}
