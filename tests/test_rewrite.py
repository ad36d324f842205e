"""laser_jax.experiments.rewrite: rewrite-then-retrieve with tiny random models on a tiny task."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from laser_jax.data import synthetic
from laser_jax.data.tokenize import tokenize_texts
from laser_jax.experiments import rewrite
from laser_jax.experiments.explicit_upper import read_reasoning
from laser_jax.inference.load import load_tokenizer
from laser_jax.model.decoder import Decoder, positions_from_mask
from tiny_models import tiny_loaded

TINY_TASK = dict(size=20, n_train=16, n_eval_per_domain=3, n_dev_per_domain=3, vocab_size=400)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return synthetic.generate(str(tmp_path_factory.mktemp("task") / "data"), seed=0, **TINY_TASK)


@pytest.fixture(scope="module")
def task_tokenizer(task):
    return load_tokenizer(task["tokenizer"])


def argmax_decode(loaded, ids, n, stop_id, width=64):
    """Step by step: the whole sequence recomputed without a cache (left padded to one width, so
    one jitted program), argmax of the last logits."""
    model, seq, out = Decoder(loaded.cfg), list(ids), []
    last_logits = jax.jit(lambda v, x, m: model.apply(v, x, positions_BT=positions_from_mask(m), kv_mask_BS=m,
                                                      logits="last").logits[0, -1])
    for _ in range(n):
        x, mask = np.zeros((1, width), np.int32), np.zeros((1, width), np.int32)
        x[0, width - len(seq):], mask[0, width - len(seq):] = seq, 1
        tok = int(jnp.argmax(last_logits(loaded.variables, jnp.asarray(x), jnp.asarray(mask))))
        out.append(tok)
        seq.append(tok)
        if tok == stop_id:
            break
    return out


def test_generated_reasoning_equals_step_by_step_argmax(tokenizer):
    lm = tiny_loaded(tokenizer, seed=1, scale=3.0)  # sharper: greedy paths repeat tokens
    prompts = ["Instruct: Given a question, retrieve passages that answer it.\nQuery: What is 3 plus 4?",
               "Query: What is 11 plus 2?"]
    ids = tokenize_texts(tokenizer, prompts, 64)
    free = [argmax_decode(lm, p, 6, -1) for p in ids]
    stop = free[0][2]  # prompt 0 stops at its third new token; prompt 1 wherever it meets it
    texts = rewrite.generate_reasonings(lm, prompts, max_new_tokens=6, batch_size=4, stop_id=stop,
                                        max_prompt_length=64)
    for ref, text in zip(free, texts):
        kept = ref[:ref.index(stop)] if stop in ref else ref  # the stop token is not part of the text
        assert text == tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert len(tokenizer(texts[0])["input_ids"]) <= 2
    # the batch's layout (order, padding) does not change a row
    assert rewrite.generate_reasonings(lm, prompts[::-1], max_new_tokens=6, batch_size=4, stop_id=stop,
                                       max_prompt_length=64) == texts[::-1]


def test_default_max_new_tokens_is_the_longest_gold_reasoning_plus_margin(task, task_tokenizer):
    gold = [r for d in ("steps2", "steps3", "steps4") for r in read_reasoning(task[f"dev/{d}"]).values()]
    longest = max(len(t) for t in tokenize_texts(task_tokenizer, gold, 10 ** 6))
    assert rewrite.default_max_new_tokens(task_tokenizer, task["dev"], margin=5) == longest + 5


def test_rewrite_then_retrieve_end_to_end_with_a_cache(task, task_tokenizer, tmp_path, monkeypatch):
    retriever, lm = tiny_loaded(task_tokenizer, seed=2), tiny_loaded(task_tokenizer, seed=3, scale=3.0)
    cache = str(tmp_path / "cache")
    kw = dict(cache_dir=cache, max_new_tokens=12, max_length=128, batch_size=4, gen_batch_size=4)
    results = rewrite.evaluate_rewrite_then_retrieve(retriever, lm, task["dev"], **kw)
    assert [r.name for r in results] == ["steps2", "steps3", "steps4"]
    for r in results:
        assert r.num_queries == TINY_TASK["n_dev_per_domain"]
        assert all(np.isfinite(v) and 0 <= v <= 1 for v in r.metrics.values())
    rows = [json.loads(line) for line in open(os.path.join(cache, "steps2.jsonl"))]
    queries = [json.loads(line) for line in open(os.path.join(task["dev/steps2"], "queries.jsonl"))]
    assert [r["id"] for r in rows] == [q["id"] for q in queries]
    # the cached reasoning is the LM's continuation of the explicit view's prefix
    instr = json.load(open(task["dev_domains"]))["steps2"]
    prompt = f"Instruct: {instr}\nQuery: {queries[0]['query']}"
    assert rows[0]["reasoning"] == rewrite.generate_reasonings(lm, [prompt], max_new_tokens=12)[0]

    def no_generation(*a, **k):
        raise AssertionError("generated although cached")

    monkeypatch.setattr(rewrite, "generate_reasonings", no_generation)
    again = rewrite.evaluate_rewrite_then_retrieve(retriever, lm, task["dev"], **kw)
    assert [r.metrics for r in again] == [r.metrics for r in results]
    with pytest.raises(AssertionError, match="generated although cached"):  # another LM: not the cache's
        rewrite.evaluate_rewrite_then_retrieve(retriever, lm, task["dev"], lm_tag="other", **kw)


def test_rewrite_command_on_hf_directories(task, task_tokenizer, tmp_path):
    from laser_jax.model.hf_io import save_pretrained

    dirs = {}
    for name, seed in (("retriever", 2), ("lm", 3)):
        m = tiny_loaded(task_tokenizer, seed=seed)
        dirs[name] = save_pretrained(str(tmp_path / name), m.variables["params"], m.cfg, task_tokenizer,
                                     dtype="float32")
    out = str(tmp_path / "r.json")
    code = rewrite.main(["rewrite", f"--model={dirs['retriever']}", f"--lm={dirs['lm']}",
                         f"--data={task['dev/steps3']}", f"--output={out}", "--max_length=128",
                         "--batch_size=4", "--gen_batch_size=4", "--margin=0"])
    assert code == 0
    summary = json.load(open(out))
    assert set(summary["domains"]) == {"steps3"} and 0 <= summary["average"]["ndcg@10"] <= 1
    assert rewrite.main(["rewrite", f"--model={dirs['retriever']}", f"--data={task['dev']}"]) == 2
