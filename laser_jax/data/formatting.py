"""Text formatting of queries, documents and the explicit view (spec section 5).

Query text = template filled with the record's instruction and query; optional chat
wrapping turns any text into one user turn + generation prompt + an empty think block;
the explicit text is the (wrapped) query text followed by the reasoning.
"""
from __future__ import annotations

import dataclasses
import string

from laser_jax.data.errors import ConfigError

DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"
THINK_SUFFIX = "<think>\n\n</think>\n\n"
TEMPLATE_FIELDS = ("instruction", "query")
# Reasoning shorter than this many characters is replaced by the raw query (spec 6).
MIN_REASONING_CHARS = 5


def check_template(template: str) -> None:
    """Raise `ConfigError` unless `template` is a usable query template.

    Args:
      template: a `str.format` template whose only placeholders are `{instruction}` and
        `{query}` (`{query}` required); literal braces are written `{{` and `}}`.
    """
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"query template {template!r} is not a valid format string: {e} "
                          "(write literal braces as '{{' and '}}')") from None
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        raise ConfigError(f"query template {template!r} has unknown placeholder(s) {unknown}; "
                          "allowed: {instruction} and {query}")
    if "query" not in fields:
        raise ConfigError(f"query template {template!r} has no {{query}} placeholder, so the "
                          "query text would be lost")


def format_query(template: str, instruction: str, query: str) -> str:
    """Fill the query template.

    Args:
      template: e.g. DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\\nQuery: {query}".
      instruction: the record's `prompt`.
      query: the raw query text.

    Returns:
      The query text (not chat-wrapped).

    Raises:
      ConfigError: for a template without `{query}` or with unknown placeholders.
    """
    check_template(template)
    return template.format(instruction=instruction, query=query)


def chat_wrap(tokenizer, text: str) -> str:
    """One user turn with the generation prompt, then an empty think block.

    Args:
      tokenizer: a Hugging Face tokenizer with a chat template.
      text: the turn's content.

    Returns:
      apply_chat_template([{"role": "user", "content": text}], tokenize=False,
      add_generation_prompt=True) + "<think>\\n\\n</think>\\n\\n".
    """
    messages = [{"role": "user", "content": text}]
    wrapped = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return wrapped + THINK_SUFFIX


def format_document(text: str, chat: bool, tokenizer=None) -> str:
    """Document text: no prefix; chat-wrapped when `chat` (then `tokenizer` is needed)."""
    if not chat:
        return text
    if tokenizer is None:
        raise ConfigError("chat wrapping of documents needs the tokenizer")
    return chat_wrap(tokenizer, text)


def explicit_text(wrapped_query: str, reasoning: str, raw_query: str) -> str:
    """Explicit-view text = (wrapped) query text + reasoning.

    Args:
      wrapped_query: the query text exactly as fed to the latent view.
      reasoning: the record's reasoning.
      raw_query: the record's raw `query`; used instead of a reasoning shorter than
        5 characters (spec section 6).

    Returns:
      The concatenation, with no separator.
    """
    if len(reasoning) < MIN_REASONING_CHARS:
        reasoning = raw_query
    return wrapped_query + reasoning


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """How queries and documents become model text (spec section 5)."""

    query_template: str = DEFAULT_QUERY_TEMPLATE
    chat_template: bool = False
