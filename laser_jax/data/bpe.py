"""Train a small byte-level BPE tokenizer that behaves like Qwen2/Qwen3's.

No model hub is reachable on a fresh machine, so the embedded default task and the
tests train their tokenizer locally. It copies the parts of Qwen's tokenizer that
LaSER depends on: Qwen's pre-tokenisation split pattern (under which "\\n\\n" is one
piece and punctuation swallows the newlines after it, so ".\\n\\n" can become one
token), byte-level BPE, the `<|im_start|>`/`<|im_end|>` chat markers with a Qwen-like
chat template, `<|endoftext|>` as padding, and no special tokens added on encode.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen2/Qwen3 pre-tokenisation pattern (tokenizer.json of the Qwen releases).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
# Plain-text think markers are ordinary added tokens in Qwen3, not special ones.
ADDED_TOKENS = ("<think>", "</think>")

# A Qwen-like chat template: one user turn, then the assistant generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """Train a Qwen-style byte-level BPE on `texts`.

    Args:
      texts: training corpus (any iterable of strings; iterated once).
      vocab_size: target size including the 256 byte symbols and special tokens.
      min_frequency: minimum pair count for a merge.

    Returns:
      A `transformers` fast tokenizer with eos = `<|im_end|>`, pad = `<|endoftext|>`
      and a chat template; `save_pretrained(dir)` writes it in Hugging Face format.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + list(ADDED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="left",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(texts: Sequence[str], out_dir: str, vocab_size: int = 512) -> str:
    """Train (see `train_tokenizer`) and save to `out_dir`; returns `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    train_tokenizer(texts, vocab_size=vocab_size).save_pretrained(out_dir)
    return out_dir
