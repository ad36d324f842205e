"""Retrieval at inference: exact blocked top-k search, IR metrics, BRIGHT-format loading.

Modules:
  search   exact inner-product top-k over a corpus streamed in blocks (jax; optional faiss)
  metrics  nDCG@k / Recall@k with pytrec_eval, per query and mean, with excluded ids removed
  bright   BRIGHT-format directories (queries.jsonl, documents.jsonl), validation, instructions
"""
