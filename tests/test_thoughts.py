"""laser_jax.experiments.thoughts: the soft steps' top tokens of a tiny random model."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from laser_jax.data.tokenize import tokenize_texts
from laser_jax.experiments import thoughts
from laser_jax.model.decoder import Decoder, positions_from_mask
from tiny_models import tiny_loaded

TEXTS = ["Instruct: Given a question, retrieve passages that answer it.\nQuery: What is 3 plus 4?",
         "Query: What is 11 plus 2?"]


def test_step_zero_is_the_lm_head_at_the_prompts_last_state(tokenizer):
    loaded = tiny_loaded(tokenizer, seed=4, scale=2.0, steps=3)
    out = thoughts.think(loaded, TEXTS, top_k=4)
    model = Decoder(loaded.cfg)
    last_logits = jax.jit(lambda v, ids, m: model.apply(v, ids, positions_BT=positions_from_mask(m), kv_mask_BS=m,
                                                        logits="last").logits[0, -1])
    for text, steps in zip(TEXTS, out):
        assert len(steps) == 2 and all(len(top) == 4 for top in steps)  # K-1 soft steps
        ids = jnp.asarray(tokenize_texts(tokenizer, [text], 512))  # alone, no padding
        logits = last_logits(loaded.variables, ids, jnp.ones_like(ids))
        assert steps[0][0][1] == int(jnp.argmax(logits))
        assert steps[0][0][0] == tokenizer.decode([steps[0][0][1]])
        p = np.asarray(jnp.exp(logits - jnp.max(logits)) / jnp.sum(jnp.exp(logits - jnp.max(logits))))
        np.testing.assert_allclose([q for _, _, q in steps[0]], np.sort(p)[::-1][:4], rtol=1e-4)
        for top in steps:
            probs = [q for _, _, q in top]
            assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert thoughts.think(loaded, TEXTS, num_steps=1) == [[], []]


def test_thoughts_command_on_a_domain_and_on_a_query(tokenizer, tmp_path, capsys):
    from laser_jax.model.hf_io import save_pretrained

    loaded = tiny_loaded(tokenizer, seed=4)
    model_dir = save_pretrained(str(tmp_path / "m"), loaded.variables["params"], loaded.cfg, tokenizer,
                                dtype="float32")
    dom = tmp_path / "steps2"
    dom.mkdir()
    (dom / "documents.jsonl").write_text(json.dumps({"id": "d1", "content": "The number 7."}) + "\n")
    (dom / "queries.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "query": f"What is {i} plus 4?",
                                                           "gold_ids": ["d1"]}) + "\n" for i in range(3)))
    (dom / "instruction.txt").write_text("Given a question, retrieve passages that answer it.")
    (dom / "reasoning.jsonl").write_text(json.dumps({"id": "q0", "reasoning": "First, take 0.\n\nThen add 4"}) + "\n")
    out = str(tmp_path / "t.md")
    assert thoughts.main(["thoughts", f"--model={model_dir}", f"--data={dom}", "--num_queries=2", "--top_k=3",
                          f"--output={out}"]) == 0
    md = open(out).read()
    assert md.strip() == capsys.readouterr().out.strip()
    assert "## Query q0" in md and "## Query q1" in md and "## Query q2" not in md
    assert md.count("| 0 |") == 2 and md.count("| 1 |") == 2 and "| 2 |" not in md  # K=3: two soft steps
    assert md.count("Gold reasoning:") == 1 and "Then add 4" in md
    assert "Query: What is 1 plus 4?" in md
    assert thoughts.main(["thoughts", f"--model={model_dir}", "--query=What is 5 plus 1?",
                          "--num_thinking_steps=2"]) == 0
    text = capsys.readouterr().out
    assert "## Query 0" in text and "| 0 |" in text and "| 1 |" not in text
    assert thoughts.main(["thoughts", f"--model={model_dir}"]) == 2
