"""End-number accuracy of greedy reasoning (experiments/lm_eval.py) on hand-made cases."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.experiments import lm_eval
from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask


def _write_split(root):
    doms = {"steps2": "Find the number.", "steps3": "Find the number."}
    (root / "domains.json").write_text(json.dumps(doms))
    chains = {"steps2": [("a", 21, [24, 20], "21 plus 3 is 24\n\n24 minus 4 is 20"),
                         ("b", 28, [25, 30], "28 minus 3 is 25\n\n25 plus 5 is 30")],
              "steps3": [("c", 9, [10, 12, 7], "9 plus 1 is 10\n\n10 plus 2 is 12\n\n12 minus 5 is 7")]}
    for dom, rows in chains.items():
        d = root / dom
        d.mkdir()
        d.joinpath("queries.jsonl").write_text("".join(json.dumps({"id": i, "query": f"Start with {s}."}) + "\n"
                                                       for i, s, _, _ in rows))
        d.joinpath("reasoning.jsonl").write_text("".join(json.dumps({"id": i, "reasoning": r}) + "\n"
                                                         for i, _, _, r in rows))
        d.joinpath("chains.jsonl").write_text("".join(json.dumps({"id": i, "start": s, "states": st}) + "\n"
                                                      for i, s, st, _ in rows))
    return str(root)


def test_end_number_and_score_on_a_hand_made_split(tmp_path):
    assert lm_eval.end_number("21 plus 3 is 24\n\n24 minus 4 is 20") == 20
    assert lm_eval.end_number("no number") is None
    queries = lm_eval.load_split(_write_split(tmp_path))
    assert [(q.domain, q.id, q.end_state) for q in queries] == [("steps2", "a", 20), ("steps2", "b", 30),
                                                                 ("steps3", "c", 7)]
    generated = ["21 plus 3 is 24\n\n24 minus 4 is 20",  # right and exact
                 "28 minus 3 is 25\n\n25 plus 5 is 31",  # wrong end number
                 "9 plus 1 is 10\n\n10 plus 2 is 12\n\n12 minus 5 is 7 then"]  # right end number, not exact
    r = lm_eval.score(queries, generated)
    assert r["accuracy"] == 2 / 3 and r["per_domain"] == {"steps2": 0.5, "steps3": 1.0}
    assert r["exact"] == 1 / 3 and r["n"] == 3


def test_generate_reasoning_is_greedy_decoding_up_to_eos(tokenizer):
    cfg = preset("tiny_qwen3", vocab_size=len(tokenizer) + 16, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                 param_dtype="float32", compute_dtype="float32", scan_layers=False)
    model = Decoder(cfg)
    variables = init_variables(cfg, jax.random.key(1))
    texts = ["Instruct: Given a question\nQuery: What is 3 plus 4?", "Query: 7"]
    got = lm_eval.generate_reasoning(model, variables, tokenizer, texts, max_new=6, batch_size=2)
    eos = tokenizer.eos_token_id
    for text, out in zip(texts, got):  # the reference: argmax one token at a time, no cache
        ids = tokenizer(text)["input_ids"]
        new = []
        for _ in range(6):
            x = jnp.asarray([ids + new])
            m = jnp.ones_like(x)
            logits = model.apply(variables, x, positions_BT=positions_from_mask(m), kv_mask_BS=m, logits="last").logits
            t = int(np.argmax(np.asarray(logits[0, -1])))
            if t == eos:
                break
            new.append(t)
        assert out == tokenizer.decode(new)
