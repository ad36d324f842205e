"""Which text format a model is encoded with, and the one stderr line that says so when the
model itself does not.

A laser_jax training checkpoint (its `meta`) and an `export_hf` directory (its `laser.json`)
carry the text format and K they were trained with. A Hugging Face directory without
`laser.json` is foreign (for example the LaSER authors' released checkpoints,
`Alibaba-NLP/LaSER-Qwen3-0.6B`, `-4B`, `-8B`) and gets

  - the authors' evaluation format when it is a Qwen3 model whose tokenizer has a chat
    template (the released checkpoints are): every query AND every document becomes the
    chat template's one user turn with the generation prompt, followed by
    "<think>\\n\\n</think>\\n\\n"; queries go through "Instruct: {instruction}\\nQuery: {query}",
    documents get no prefix; K = 3 (the mean of the K latent states, L2-normalised);
  - the spec's default otherwise: the same query template, no chat wrapping, K = 3.

Either way `announce` prints ONE line on stderr that names the format used and the flags
that change it. `--chat_template`, `--query_template` and `--num_thinking_steps` (on
`export` and `evaluate`; keyword arguments of the same names on
`LaserEncoder.from_pretrained` and `LaserMtebEncoder`) override whatever the model says,
for laser_jax models too.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional, Tuple

from absl import flags

from laser_jax.data.formatting import DEFAULT_QUERY_TEMPLATE, THINK_SUFFIX, TextFormat, check_template
from laser_jax.method.views import resolve_num_thinking_steps

__all__ = [
    "AUTHORS_FORMAT", "SPEC_FORMAT", "FOREIGN_NUM_THINKING_STEPS", "ORIGIN_METADATA", "ORIGIN_AUTHORS",
    "ORIGIN_SPEC", "has_chat_template", "foreign_format", "hf_dir_format", "check_overrides",
    "apply_overrides", "describe", "notice", "announce", "define_format_flags", "format_flag_values",
]

# Where a loaded model's format came from (`LoadedModel.format_origin`).
ORIGIN_METADATA = "metadata"  # a checkpoint's meta or an HF directory's laser.json
ORIGIN_AUTHORS = "authors"  # foreign Qwen3 directory with a chat template: the authors' format
ORIGIN_SPEC = "spec"  # any other foreign directory: the spec's default

AUTHORS_FORMAT = TextFormat(query_template=DEFAULT_QUERY_TEMPLATE, chat_template=True)
SPEC_FORMAT = TextFormat(query_template=DEFAULT_QUERY_TEMPLATE, chat_template=False)
FOREIGN_NUM_THINKING_STEPS = 3  # the authors' evaluation and the spec's default K
FORMAT_FLAGS = "--chat_template=true|false, --query_template=..., --num_thinking_steps=K"


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` has a chat template (a string, or a dict of named templates)."""
    return bool(getattr(tokenizer, "chat_template", None))


def foreign_format(family: str, tokenizer) -> Tuple[TextFormat, int, str]:
    """(text format, K, origin) of a model that carries no laser_jax metadata.

    Args:
      family: the model family ("qwen3", "qwen2", "llama"; `ModelConfig.family`).
      tokenizer: its tokenizer.

    Returns:
      (AUTHORS_FORMAT, 3, ORIGIN_AUTHORS) for a Qwen3 model whose tokenizer has a chat
      template, else (SPEC_FORMAT, 3, ORIGIN_SPEC).
    """
    if family == "qwen3" and has_chat_template(tokenizer):
        return AUTHORS_FORMAT, FOREIGN_NUM_THINKING_STEPS, ORIGIN_AUTHORS
    return SPEC_FORMAT, FOREIGN_NUM_THINKING_STEPS, ORIGIN_SPEC


def hf_dir_format(meta: Optional[dict], family: str, tokenizer) -> Tuple[TextFormat, int, str]:
    """(text format, K, origin) of a Hugging Face directory: from its laser.json (`meta`; a
    field it lacks takes the spec's default), or `foreign_format` when it has none (None)."""
    if meta is None:
        return foreign_format(family, tokenizer)
    fmt = TextFormat(**{k: meta[k] for k in ("query_template", "chat_template") if k in meta})
    return fmt, int(meta.get("num_thinking_steps", FOREIGN_NUM_THINKING_STEPS)), ORIGIN_METADATA


def check_overrides(chat_template: Optional[bool] = None, query_template: Optional[str] = None,
                    num_thinking_steps: Optional[int] = None) -> None:
    """ValueError naming the first override that cannot work (before any slow loading).

    None means "the model's own"."""
    if chat_template is not None and not isinstance(chat_template, bool):
        raise ValueError(f"chat_template={chat_template!r} must be True, False or None (the model's own)")
    if query_template is not None:
        check_template(query_template)
    if num_thinking_steps is not None:
        resolve_num_thinking_steps(num_thinking_steps, num_thinking_steps)


def apply_overrides(fmt: TextFormat, steps: int, *, chat_template: Optional[bool] = None,
                    query_template: Optional[str] = None, num_thinking_steps: Optional[int] = None
                    ) -> Tuple[TextFormat, int, Tuple[str, ...]]:
    """The model's (format, K) with the given overrides; returns (format, K, names of the
    overrides that were given)."""
    check_overrides(chat_template, query_template, num_thinking_steps)
    given = {k: v for k, v in (("chat_template", chat_template), ("query_template", query_template))
             if v is not None}
    overridden = tuple(given) + (("num_thinking_steps",) if num_thinking_steps is not None else ())
    return dataclasses.replace(fmt, **given), resolve_num_thinking_steps(num_thinking_steps, steps), overridden


def describe(fmt: TextFormat, steps: int) -> str:
    """The format in words, on one line, e.g. for AUTHORS_FORMAT and K=3: "chat template ON
    (every query and document: one user turn + generation prompt + '<think>\\n\\n</think>\\n\\n'),
    query template 'Instruct: {instruction}\\nQuery: {query}', documents unprefixed, K=3"."""
    chat = (f"chat template ON (every query and document: one user turn + generation prompt + "
            f"{THINK_SUFFIX!r})" if fmt.chat_template else "chat template OFF")
    return f"{chat}, query template {fmt.query_template!r}, documents unprefixed, K={steps}"


def notice(path: str, origin: str, fmt: TextFormat, steps: int, overridden: Tuple[str, ...] = ()) -> str:
    """The one line `announce` prints for a foreign model (no trailing newline)."""
    if origin == ORIGIN_AUTHORS:
        why, base = "is a Qwen3 model whose tokenizer has a chat template", "the LaSER authors' evaluation format"
    else:
        why, base = "is not a Qwen3 model whose tokenizer has a chat template", "the spec's default format"
    given = f" with {', '.join(overridden)} as given" if overridden else ""
    return (f"laser_jax: {path} has no laser.json (no laser_jax metadata) and {why}: encoding in {base}{given}: "
            f"{describe(fmt, steps)}; change with {FORMAT_FLAGS} (Python: keyword arguments of the same names)")


def announce(path: str, origin: str, fmt: TextFormat, steps: int, overridden: Tuple[str, ...] = (),
             stream=None) -> bool:
    """Print `notice(...)` on stderr (or `stream`) when `origin` is a foreign one; returns
    whether it printed."""
    if origin == ORIGIN_METADATA:
        return False
    print(notice(path, origin, fmt, steps, overridden), file=stream or sys.stderr, flush=True)
    return True


# ------------------------------------------------------------------------- command lines
def define_format_flags(flag_values: flags.FlagValues) -> None:
    """--chat_template and --query_template on a command's flags (each command defines its
    own --num_thinking_steps)."""
    flags.DEFINE_boolean("chat_template", None, "Wrap every query and document in the tokenizer's chat "
                         "template (one user turn + generation prompt + an empty think block): "
                         "--chat_template=true|false (default: the model's own; a Hugging Face "
                         "directory without laser.json: on for a Qwen3 model with a chat template, "
                         "as the LaSER authors evaluate, else off).", flag_values=flag_values)
    flags.DEFINE_string("query_template", None, "Query template with {instruction} and {query}; "
                        "write a newline as \\n (default: the model's own, else "
                        f"{DEFAULT_QUERY_TEMPLATE!r}).", flag_values=flag_values)


def format_flag_values(f: flags.FlagValues) -> dict:
    """The format overrides a command line gave (--chat_template, --query_template and the
    command's --num_thinking_steps), as keyword arguments for `LaserEncoder.from_pretrained`:
    only those given; "\\n" and "\\t" typed in --query_template become a newline and a tab.
    ValueError naming the flag when one cannot work."""
    given = {}
    if "num_thinking_steps" in f and f.num_thinking_steps is not None:
        try:
            given["num_thinking_steps"] = resolve_num_thinking_steps(f.num_thinking_steps, f.num_thinking_steps)
        except ValueError as e:
            raise ValueError(f"--num_thinking_steps={f.num_thinking_steps}: {e}") from None
    if f.chat_template is not None:
        given["chat_template"] = bool(f.chat_template)
    if f.query_template is not None:
        template = f.query_template.replace("\\n", "\n").replace("\\t", "\t")
        try:
            check_template(template)
        except ValueError as e:
            raise ValueError(f"--query_template: {e}") from None
        given["query_template"] = template
    return given
