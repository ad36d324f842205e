"""Train a small byte-level BPE tokenizer that behaves like Qwen2/Qwen3's.

No model hub is reachable on a fresh machine, so the embedded default task and the
tests train their tokenizer locally. It copies the parts of Qwen's tokenizer that
LaSER depends on: Qwen's pre-tokenisation split pattern (under which "\\n\\n" is one
piece and punctuation swallows the newlines after it, so ".\\n\\n" can become one
token), byte-level BPE, the `<|im_start|>`/`<|im_end|>` chat markers with a Qwen-like
chat template, `<|endoftext|>` as padding, and no special tokens added on encode.

`single_tokens` makes given words (as written after a space, e.g. " Cato") one token each:
after training, merges that build each word from the pieces the trained model splits it into
are appended (they rank after every trained merge, so no other text tokenizes differently
unless it contains that word). `single_token_words` finds such words in a given tokenizer.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, List, Sequence

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


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2,
                    single_tokens: Sequence[str] = ()):
    """Train a Qwen-style byte-level BPE on `texts`.

    Args:
      texts: training corpus (any iterable of strings; iterated once).
      vocab_size: target size including the 256 byte symbols and special tokens (words of
        `single_tokens` that training did not merge add their tokens beyond it).
      min_frequency: minimum pair count for a merge.
      single_tokens: words (each one pre-token, e.g. " Cato") that must be one token each.

    Returns:
      A `transformers` fast tokenizer with eos = `<|im_end|>`, pad = `<|endoftext|>`
      and a chat template; `save_pretrained(dir)` writes it in Hugging Face format.
    """
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
    if single_tokens:
        tok = merge_words(tok, single_tokens)
    return _wrap(tok)


def _wrap(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

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


def merge_words(tok: Tokenizer, words: Sequence[str]) -> Tokenizer:
    """A copy of the trained BPE `tok` in which each word is one token (module doc).

    Raises:
      ValueError: a word that the pre-tokenizer splits (it can never be one token).
    """
    state = json.loads(tok.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    next_id = 1 + max(list(vocab.values()) + [t["id"] for t in state["added_tokens"]])
    for word in words:
        pieces = tok.pre_tokenizer.pre_tokenize_str(word)
        if len(pieces) != 1:
            raise ValueError(f"{word!r} is split by the pre-tokenizer into {[p for p, _ in pieces]}; "
                             "it cannot be one token")
        parts = [t.value for t in tok.model.tokenize(pieces[0][0])]
        current = parts[0]
        for part in parts[1:]:
            merges.append([current, part])
            current += part
            if current not in vocab:
                vocab[current] = next_id
                next_id += 1
        if len(parts) > 1:
            tok = Tokenizer.from_str(json.dumps(state))
    return tok


def single_token_words(tokenizer, pattern: str = r" [A-Z][a-z]{3,6}", exclude=frozenset()) -> List[str]:
    """Words of a Hugging Face tokenizer's vocabulary that it encodes as exactly one token,
    whose text (leading space included) matches `pattern` fully and whose stripped, lower-cased
    text is not in `exclude`; sorted."""
    rx = re.compile(pattern)
    ids = sorted(set(tokenizer.get_vocab().values()))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    found = {t for t in texts if rx.fullmatch(t) and t.strip().lower() not in exclude}
    return sorted(t for t in found if len(tokenizer.encode(t, add_special_tokens=False)) == 1)


def save_tokenizer(texts: Sequence[str], out_dir: str, vocab_size: int = 512, single_tokens: Sequence[str] = ()) -> str:
    """Train (see `train_tokenizer`) and save to `out_dir`; returns `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    train_tokenizer(texts, vocab_size=vocab_size, single_tokens=single_tokens).save_pretrained(out_dir)
    return out_dir
