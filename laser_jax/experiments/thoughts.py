"""What the latent view thinks: the tokens behind each soft step.

For each query (formatted exactly as the latent view reads it) the latent view runs
(`laser_jax.method.views.latent_view`: prefill, then K-1 soft steps); at each soft step j < K-1
its state h_j becomes the next input through softmax(logits(h_j)) @ E
(`laser_jax.method.views.soft_token`). This prints the top-k tokens of that distribution,
decoded, with their probabilities, beside the domain's gold reasoning when it has one.

A model trained with soft_token "pause" feeds every soft step the same learned vector,
whatever the query: its steps carry no token distribution of their own, and the table says
so instead of printing top tokens; a header names the input embeddings nearest to that one
vector (cosine), labelled as input-independent.

    python -m laser_jax.experiments.thoughts --model=RUN --data=DIR/eval/<domain> --num_queries=3
        [--top_k=5] [--num_thinking_steps=K] [--output=FILE.md]
    python -m laser_jax.experiments.thoughts --model=RUN --query="What is 3 plus 4?" [--instruction=...]

The thoughts figure (`--figure`, issue 21): over every query of a split (or one domain) of a
generated task, per soft step j = 1..K-1 (the j-th soft token, from the state before it), the
share of the queries with >= j reasoning steps whose top token is the hop-j state of their
chain (`chains.jsonl` `states[j-1]`: the hop-j entity of the hops task; for the arithmetic
task the intermediate number's first token, i.e. its first digit), the share with it among
the top-k, and over every query with an i-th hop the share whose top token is the hop-i state
(does step j land on another hop? formats that spend several tokens on a hop, e.g. "pairs",
land hop i on a later step). Tokens are compared as stripped text, so " Cato" and "Cato" agree.

    python -m laser_jax.experiments.thoughts --model=RUN --data=DIR/dev --figure [--output=FILE.md]
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from laser_jax.cli import define_help, run_cli
from laser_jax.data.tokenize import left_pad, pad_token_id, tokenize_texts
from laser_jax.inference.encoder import default_dtype
from laser_jax.inference.load import LoadedModel, load_for_inference
from laser_jax.inference.reasoning import REASONING_FILE, SplitQuery, load_split, query_prefixes, read_reasoning
from laser_jax.method.views import latent_view, resolve_num_thinking_steps
from laser_jax.model.decoder import LATENT, PAUSE, Decoder
from laser_jax.retrieval import bright


@dataclasses.dataclass
class Thought:
    """One query: its id, the text the latent view reads, per soft step the top-k
    (token text, token id, probability) in falling probability, and the gold reasoning."""
    id: str
    text: str
    steps: List[List[Tuple[str, int, float]]]
    gold: Optional[str] = None


PAUSE_STEP = "the learned pause vector (input-independent: no token distribution of its own)"


@functools.partial(jax.jit, static_argnames=("model", "num_steps"))
def soft_step_probs(model: Decoder, variables, ids, mask, num_steps: int):
    """float32 [B, K-1, V]: softmax(logits(h_j)) for j < K-1, the distributions the latent view
    turns into its soft tokens (its states from `latent_view`, the LM head as in `soft_token`)."""
    _, states_BJD = latent_view(model, variables, ids, mask, num_steps)
    logits_BJV = model.apply(variables, states_BJD[:, :num_steps - 1], method=Decoder.logits)
    return jax.nn.softmax(logits_BJV.astype(jnp.float32), axis=-1)


def think(loaded: LoadedModel, texts: Sequence[str], *, top_k: int = 5, num_steps: Optional[int] = None,
          max_length: int = 512) -> List[List[List[Tuple[str, int, float]]]]:
    """Per text, per soft step (K-1 of them), the top-k (token text, id, probability)."""
    steps = resolve_num_thinking_steps(num_steps, loaded.num_thinking_steps)
    if steps == 1 or not texts:
        return [[] for _ in texts]
    if loaded.cfg.soft_token == "pause":  # every soft step is fed one vector: nothing to decode per query
        return [[[] for _ in range(steps - 1)] for _ in texts]
    tok = loaded.tokenizer
    rows = tokenize_texts(tok, list(texts), max_length)
    ids, mask = left_pad(rows, max(len(r) for r in rows), pad_token_id(tok))
    probs = np.asarray(jax.device_get(soft_step_probs(Decoder(loaded.cfg), loaded.variables, jnp.asarray(ids),
                                                      jnp.asarray(mask), steps)))
    out = []
    for p_JV in probs:
        top_JK = np.argsort(-p_JV, axis=-1, kind="stable")[:, :top_k]
        out.append([[(tok.decode([int(t)]), int(t), float(p[t])) for t in top] for p, top in zip(p_JV, top_JK)])
    return out


def pause_neighbours(loaded: LoadedModel, top_k: int = 5) -> List[Tuple[str, int, float]]:
    """A soft_token "pause" model: the (token text, id, cosine) of the `top_k` input embeddings
    nearest to its learned pause vector, the one input of every soft step of every query."""
    table_VD = jnp.asarray(loaded.variables["params"]["embed_tokens"]["embedding"], jnp.float32)
    pause_D = jnp.asarray(loaded.variables[LATENT][PAUSE], jnp.float32)
    cos_V = table_VD @ pause_D / jnp.maximum(jnp.linalg.norm(table_VD, axis=-1) * jnp.linalg.norm(pause_D), 1e-12)
    values, ids = jax.device_get(jax.lax.top_k(cos_V, min(top_k, cos_V.shape[0])))
    return [(loaded.tokenizer.decode([int(t)]), int(t), float(v)) for t, v in zip(ids, values)]


def pause_header(loaded: LoadedModel, top_k: int = 5) -> str:
    """The markdown paragraph that opens a pause model's thoughts."""
    near = ", ".join(f"`{t!r}` {c:.3f}" for t, _, c in pause_neighbours(loaded, top_k))
    return ("Soft steps: soft_token \"pause\": every soft step of every query is fed the same learned vector, "
            "so the steps carry no token distribution of their own. Input embeddings nearest to that vector "
            f"(cosine; input-independent): {near}\n")


def domain_thoughts(loaded: LoadedModel, domain_dir: str, *, num_queries: int = 3, **kw) -> List[Thought]:
    """The first `num_queries` queries of a BRIGHT-format domain directory, with gold reasoning
    when the domain has reasoning.jsonl."""
    domain = bright.load_domain(domain_dir)
    ids, queries = domain.query_ids[:num_queries], domain.queries[:num_queries]
    texts = query_prefixes(loaded.text_format, loaded.tokenizer, queries, domain.require_instruction())
    gold = read_reasoning(domain_dir) if os.path.isfile(os.path.join(domain_dir, REASONING_FILE)) else {}
    return [Thought(i, t, s, gold.get(i)) for i, t, s in zip(ids, texts, think(loaded, texts, **kw))]


def format_thoughts(thoughts: Sequence[Thought]) -> str:
    """Markdown: per query its text, a table of the soft steps' top tokens, the gold reasoning."""
    lines = []
    for th in thoughts:
        lines += [f"## Query {th.id}", "", "```", th.text, "```", ""]
        if not th.steps:
            lines += ["(K=1: no soft steps)", ""]
        else:
            pause = not any(th.steps)  # a pause model's steps have no tokens of their own
            lines += [f"| soft step | {'input' if pause else 'top tokens (probability)'} |", "|---|---|"]
            for j, top in enumerate(th.steps):
                cells = ", ".join(f"`{t!r}` {p:.3f}" for t, _, p in top) if top else PAUSE_STEP
                lines.append(f"| {j} | {cells} |")
            lines.append("")
        if th.gold is not None:
            lines += ["Gold reasoning:", "", "```", th.gold, "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------ thoughts figure
def state_token(tokenizer, state) -> str:
    """The first non-blank token of a chain state as it follows a space (" Cato" -> "Cato",
    " 31" -> "3"), stripped."""
    for i in tokenizer.encode(f" {state}", add_special_tokens=False):
        text = tokenizer.decode([i]).strip()
        if text:
            return text
    return ""


def split_queries(data_dir: str) -> List[SplitQuery]:
    """The queries of a split directory, or of one domain directory of a split, with chains."""
    if bright.is_domain_dir(data_dir):
        parent, name = os.path.split(os.path.abspath(data_dir).rstrip(os.sep))
        queries = [q for q in load_split(parent) if q.domain == name]
    else:
        queries = load_split(data_dir)
    queries = [q for q in queries if q.states]
    if not queries:
        raise FileNotFoundError(f"{data_dir}: no queries with chains.jsonl states (a split of a generated task)")
    return queries


def hop_figure(loaded: LoadedModel, data_dir: str, *, top_k: int = 5, num_steps: Optional[int] = None,
               max_length: int = 512, batch_size: int = 64) -> dict:
    """The thoughts figure (module doc) of the queries of `data_dir`: {"n", "K", "top_k",
    "steps": [{"step", "n", "top1", "topk", "top1_is_hop": [share per hop i]}]}."""
    if loaded.cfg.soft_token == "pause":
        raise ValueError("a soft_token \"pause\" model feeds every soft step one learned vector: its soft steps "
                         "name no token, so it has no thoughts figure")
    queries = split_queries(data_dir)
    steps = resolve_num_thinking_steps(num_steps, loaded.num_thinking_steps)
    texts = [query_prefixes(loaded.text_format, loaded.tokenizer, [q.query], q.instruction)[0] for q in queries]
    thoughts = []
    for start in range(0, len(texts), batch_size):
        thoughts += think(loaded, texts[start:start + batch_size], top_k=top_k, num_steps=steps, max_length=max_length)
    hops = [[state_token(loaded.tokenizer, s) for s in q.states] for q in queries]
    max_hops = max(len(h) for h in hops)
    out = []
    for j in range(1, steps):
        tops = [[t.strip() for t, _, _ in th[j - 1]] for th in thoughts]
        own = [(top, h) for top, h in zip(tops, hops) if len(h) >= j]  # queries with a hop j
        out.append({
            "step": j, "n": len(own),
            "top1": _share([top[0] == h[j - 1] for top, h in own]),
            "topk": _share([h[j - 1] in top for top, h in own]),
            # every query with a hop i (a format spending several tokens on a hop lands later)
            "top1_is_hop": [_share([top[0] == h[i] for top, h in zip(tops, hops) if len(h) > i])
                            for i in range(max_hops)]})
    return {"data": os.path.abspath(data_dir), "n": len(queries), "K": steps, "top_k": top_k, "steps": out}


def _share(flags_: Sequence[bool]) -> Optional[float]:
    return round(float(np.mean(flags_)), 4) if len(flags_) else None


def format_figure(figure: dict) -> str:
    """Markdown table of `hop_figure`."""
    hops = len(figure["steps"][0]["top1_is_hop"]) if figure["steps"] else 0
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    lines = [f"Thoughts figure: {figure['n']} queries of {figure['data']}, K={figure['K']}", "",
             f"| soft step j | queries (>= j steps) | top-1 = hop-j state (%) | hop-j in top-{figure['top_k']} (%) | "
             + " | ".join(f"top-1 = hop {i + 1} (%)" for i in range(hops)) + " |",
             "|---|---|---|---|" + "---|" * hops]
    for s in figure["steps"]:
        lines.append(f"| {s['step']} | {s['n']} | {pct(s['top1'])} | {pct(s['topk'])} | "
                     + " | ".join(pct(x) for x in s["top1_is_hop"]) + " |")
    if not figure["steps"]:
        lines.append("(K=1: no soft steps)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- CLI
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "Training workdir, checkpoint or HF directory.", flag_values=FLAGS)
flags.DEFINE_string("data", "", "One BRIGHT-format domain directory (e.g. DIR/eval/steps3).", flag_values=FLAGS)
flags.DEFINE_integer("num_queries", 3, "Queries shown from --data.", flag_values=FLAGS)
flags.DEFINE_multi_string("query", [], "A query text (instead of --data; repeatable).", flag_values=FLAGS)
flags.DEFINE_string("instruction", "", "Instruction of --query texts.", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 5, "Tokens shown per soft step.", flag_values=FLAGS)
flags.DEFINE_integer("num_thinking_steps", None, "K (default: the model's).", flag_values=FLAGS)
flags.DEFINE_integer("max_length", 512, "Query truncation length in tokens.", flag_values=FLAGS)
flags.DEFINE_string("output", "", "Also write the markdown here (with --figure also FILE.json).", flag_values=FLAGS)
flags.DEFINE_boolean("figure", False, "The thoughts figure over every query of --data (a split or a domain of a "
                     "generated task) instead of per-query tables.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Queries per forward pass (--figure).", flag_values=FLAGS)
define_help(FLAGS)


def run(f: flags.FlagValues) -> str:
    """The markdown for the parsed flags (printed by run_cli); also written to --output."""
    if not f.model or bool(f.data) == bool(f.query):
        raise ValueError("--model and exactly one of --data and --query are required")
    loaded = load_for_inference(f.model, default_dtype())
    kw = dict(top_k=f.top_k, num_steps=f.num_thinking_steps, max_length=f.max_length)
    if f.figure:
        if not f.data:
            raise ValueError("--figure needs --data (a split or domain directory of a generated task)")
        figure = hop_figure(loaded, f.data, batch_size=f.batch_size, **kw)
        return _write(f.output, format_figure(figure), figure)
    if f.data:
        thoughts = domain_thoughts(loaded, f.data, num_queries=f.num_queries, **kw)
    else:
        texts = query_prefixes(loaded.text_format, loaded.tokenizer, f.query, f.instruction)
        thoughts = [Thought(str(i), t, s) for i, (t, s) in enumerate(zip(texts, think(loaded, texts, **kw)))]
    text = format_thoughts(thoughts)
    if loaded.cfg.soft_token == "pause":
        text = pause_header(loaded, f.top_k) + "\n" + text
    return _write(f.output, text)


def _write(output: str, text: str, figure: Optional[dict] = None) -> str:
    """`text` (returned, printed by run_cli) also to `output`, and `figure` to its .json."""
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        if figure is not None:
            with open(os.path.splitext(output)[0] + ".json", "w", encoding="utf-8") as out:
                json.dump(figure, out, indent=1)
                out.write("\n")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry; argv[0] is the program name. Returns the exit status."""
    return run_cli(FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
