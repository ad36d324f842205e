"""Query / document / explicit-view text formatting (spec section 5)."""
import pytest

from laser_jax.data.errors import ConfigError
from laser_jax.data.formatting import (DEFAULT_QUERY_TEMPLATE, chat_wrap, explicit_text,
                                       format_document, format_query)


def test_default_template():
    assert DEFAULT_QUERY_TEMPLATE == "Instruct: {instruction}\nQuery: {query}"
    assert format_query(DEFAULT_QUERY_TEMPLATE, "Find docs.", "Why {x}?") == \
        "Instruct: Find docs.\nQuery: Why {x}?"


def test_custom_template_and_literal_braces():
    assert format_query("{query} ({{raw}})", "ignored", "q") == "q ({raw})"


@pytest.mark.parametrize("template,message", [
    ("Instruct: {instruction}", "no {query} placeholder"),
    ("Instruct: {instruct}\nQuery: {query}", "unknown placeholder"),
    ("Query: {query", "not a valid format string"),
])
def test_bad_templates_are_config_errors(template, message):
    with pytest.raises(ConfigError, match=message):
        format_query(template, "i", "q")


def test_chat_wrap_is_one_user_turn_plus_empty_think(tokenizer):
    wrapped = chat_wrap(tokenizer, "hello")
    assert wrapped == ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
                       "<think>\n\n</think>\n\n")
    assert format_document("doc", True, tokenizer) == chat_wrap(tokenizer, "doc")
    assert format_document("doc", False) == "doc"
    with pytest.raises(ConfigError):
        format_document("doc", True, None)


def test_explicit_text_replaces_short_reasoning_by_raw_query():
    assert explicit_text("Q:", "Think.", "raw") == "Q:Think."
    assert explicit_text("Q:", "abcde", "raw") == "Q:abcde"       # 5 characters: kept
    assert explicit_text("Q:", "abcd", "raw") == "Q:raw"          # 4: replaced
    assert explicit_text("Q:", "", "raw") == "Q:raw"
