"""Greedy generation on the KV cache equals step-by-step argmax over full recomputes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask
from laser_jax.model.generate import greedy_generate

PAD = 0


def _model(seed=0):
    cfg = preset("tiny_qwen3", vocab_size=48, num_hidden_layers=2)
    variables = init_variables(cfg, jax.random.key(seed))
    # Sharpen the LM head so greedy paths revisit a few tokens (stop tokens then really occur).
    variables = jax.tree_util.tree_map(lambda x: x * 4.0, variables)
    return Decoder(cfg), variables


def _reference(model, variables, prompt, n, stop_id, stop_seq=()):
    """Step by step: the whole sequence recomputed without a cache, argmax of the last logits."""
    seq = list(prompt)
    out = []
    for _ in range(n):
        ids = jnp.asarray([seq], jnp.int32)
        mask = jnp.ones_like(ids)
        o = model.apply(variables, ids, positions_BT=positions_from_mask(mask), kv_mask_BS=mask, logits="last")
        tok = int(jnp.argmax(o.logits[0, -1]))
        out.append(tok)
        seq.append(tok)
        if tok == stop_id or (stop_seq and tuple(out[-len(stop_seq):]) == tuple(stop_seq)):
            break
    return out


def _left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), PAD, np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return jnp.asarray(ids), jnp.asarray(mask)


PROMPTS = [[5, 9, 13], [7], [11, 3, 3, 20, 31, 2], [40, 41]]


def test_greedy_generation_equals_step_by_step_argmax_with_left_padding():
    model, variables = _model()
    ids, mask = _left_pad(PROMPTS)
    gen = greedy_generate(model, variables, ids, mask, max_new_tokens=7, stop_ids_B=-1, pad_id=PAD)
    for i, prompt in enumerate(PROMPTS):
        assert list(np.asarray(gen.tokens[i])) == _reference(model, variables, prompt, 7, -1), i
    assert not bool(jnp.any(gen.stopped)) and list(np.asarray(gen.lengths)) == [7] * 4


def test_rows_stop_at_their_own_stop_token_or_sequence():
    model, variables = _model()
    ids, mask = _left_pad(PROMPTS)
    free = [_reference(model, variables, p, 8, -1) for p in PROMPTS]
    # each row's stop token: the third token it would generate, so rows stop at different points
    stop_ids = [row[2] for row in free]
    seqs = np.full((4, 2), -1, np.int32)
    stop_ids[1], seqs[1] = -1, free[1][3:5]  # row 1 stops at a two-token sequence instead
    gen = greedy_generate(model, variables, ids, mask, max_new_tokens=8, stop_ids_B=jnp.asarray(stop_ids),
                          stop_seqs_BM=jnp.asarray(seqs), pad_id=PAD)
    for i, prompt in enumerate(PROMPTS):
        ref = _reference(model, variables, prompt, 8, stop_ids[i], tuple(s for s in seqs[i] if s >= 0))
        n = int(gen.lengths[i])
        assert n == len(ref) and bool(gen.stopped[i]), i
        assert n <= (5 if i == 1 else 3)
        assert list(np.asarray(gen.tokens[i, :n])) == ref, i
        assert np.all(np.asarray(gen.tokens[i, n:]) == PAD), i
