"""`PipelineOptions`: everything the training input pipeline needs besides data and tokenizer."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from laser_jax.data.errors import ConfigError
from laser_jax.data.formatting import DEFAULT_QUERY_TEMPLATE, check_template
from laser_jax.data.segments import SEGMENT_RULES, SPLIT_MODES
from laser_jax.data.tokenize import DEFAULT_FRACTIONS, Bucketing


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Options of the training input pipeline (checked on construction).

    Attributes:
      batch_size: queries per host per step (B_host); the global batch is
        batch_size * process_count.
      group_size: documents per query G (1 positive + G-1 hard negatives).
      num_thinking_steps: J, the number of aligned explicit states (the spec's K).
      query_max_len, doc_max_len, explicit_max_len: truncation lengths.
      query_template: "{instruction}" / "{query}" template of the query text.
      chat_template: wrap queries and documents in the tokenizer's chat template.
      shuffle: shuffle record order per epoch and choose documents with a seeded hash;
        off = file order, positives[epoch % len], negatives rotating from the first.
      seed: seed of every random choice.
      segment_rule: "linspace" (code) or "paper" downsampling of segment ends.
      split_mode: "code" or "any_double_newline" segment-ending ids.
      num_epochs: passes over the data; None = repeat forever.
      process_index, process_count: this host and the number of hosts.
      pad_multiple, bucket_fractions: length bucketing (see tokenize.Bucketing).
      num_threads, prefetch: grain read threads and batches prefetched.
    """

    batch_size: int = 8
    group_size: int = 2
    num_thinking_steps: int = 3
    query_max_len: int = 512
    doc_max_len: int = 512
    explicit_max_len: int = 1024
    query_template: str = DEFAULT_QUERY_TEMPLATE
    chat_template: bool = True
    shuffle: bool = True
    seed: int = 0
    segment_rule: str = "linspace"
    split_mode: str = "code"
    num_epochs: Optional[int] = 1
    process_index: int = 0
    process_count: int = 1
    pad_multiple: int = 16
    bucket_fractions: Optional[Tuple[float, ...]] = DEFAULT_FRACTIONS
    num_threads: int = 2
    prefetch: int = 4

    def __post_init__(self):
        positive = ("batch_size", "group_size", "num_thinking_steps", "query_max_len",
                    "doc_max_len", "explicit_max_len", "process_count", "pad_multiple")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")
        if not 0 <= self.process_index < self.process_count:
            raise ConfigError(f"process_index {self.process_index} is not in "
                              f"[0, {self.process_count})")
        if self.segment_rule not in SEGMENT_RULES:
            raise ConfigError(f"segment_rule {self.segment_rule!r} not in {SEGMENT_RULES}")
        if self.split_mode not in SPLIT_MODES:
            raise ConfigError(f"split_mode {self.split_mode!r} not in {SPLIT_MODES}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        check_template(self.query_template)

    @property
    def global_batch_size(self) -> int:
        """Queries per step over all hosts."""
        return self.batch_size * self.process_count

    @property
    def bucketing(self) -> Bucketing:
        """The length bucketing these options describe."""
        fractions = None if self.bucket_fractions is None else tuple(self.bucket_fractions)
        return Bucketing(self.pad_multiple, fractions)
