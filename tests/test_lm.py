"""Causal-LM training (train.objective=causal_lm): the loss, the LM batches, exact resume."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_run_config
from laser_jax.data import lm_pipeline
from laser_jax.data.errors import ConfigError
from laser_jax.data.synthetic import ensure_generated
from laser_jax.method.lm_objective import causal_lm_objective
from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder, init_variables
from laser_jax.train import loop
from laser_jax.train.config import validate
from laser_jax.train.metrics import read_metrics
from laser_jax.train.step import learning_rate_schedule
from laser_jax.train.trainer import set_up


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return ensure_generated(str(tmp_path_factory.mktemp("task")), seed=0, n_train=256, n_eval_per_domain=8)


def lm_config(task, **overrides):
    c = small_run_config(task, **{"train.objective": "causal_lm", "data.lm_num_widths": 2, **overrides})
    validate(c)
    return c


def test_causal_lm_loss_equals_a_hand_computation():
    cfg = preset("tiny_qwen3", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, param_dtype="float32",
                 compute_dtype="float32", scan_layers=False)
    model = Decoder(cfg)
    variables = init_variables(cfg, jax.random.key(0))
    ids = np.array([[0, 0, 0, 5, 7, 9, 11], [0, 3, 4, 8, 2, 6, 1], [0, 0, 0, 0, 0, 12, 13]], np.int32)
    mask = (np.arange(7)[None] >= np.array([[3], [1], [5]])).astype(np.int32)
    loss, metrics = causal_lm_objective(model, variables, {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask)})

    from laser_jax.model.decoder import positions_from_mask
    logits = np.asarray(model.apply(variables, jnp.asarray(ids), positions_BT=positions_from_mask(jnp.asarray(mask)),
                                    kv_mask_BS=jnp.asarray(mask), logits="all").logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    terms, hits = [], []
    for b in range(3):
        real = np.nonzero(mask[b])[0]
        for t in real[:-1]:  # the first real token is never a target; padding never is one
            terms.append(-logp[b, t, ids[b, t + 1]])
            hits.append(np.argmax(logits[b, t]) == ids[b, t + 1])
    assert len(terms) == 3 + 5 + 1
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["acc"]), np.mean(hits), rtol=1e-6)
    assert float(metrics["targets"]) == len(terms)


def test_cosine_schedule_with_floor_and_warmup_steps():
    s = learning_rate_schedule(3e-3, 1500, 0.0, "cosine", 0.1, warmup_steps=100)
    np.testing.assert_allclose([float(s(0)), float(s(50)), float(s(100)), float(s(1500))],
                               [0.0, 1.5e-3, 3e-3, 3e-4], rtol=1e-5)
    mid = float(s(800))  # halfway through the decay: floor + (peak - floor) / 2
    np.testing.assert_allclose(mid, 3e-4 + 2.7e-3 / 2, rtol=1e-3)
    lin = learning_rate_schedule(1e-3, 100, 0.1)  # the default: linear warm-up, linear decay to 0
    np.testing.assert_allclose([float(lin(10)), float(lin(100))], [1e-3, 0.0], atol=1e-9)


def test_lm_rows_batches_and_step_determinism(task, tokenizer_dir):
    from laser_jax.inference.load import load_tokenizer

    tok = load_tokenizer(task["tokenizer"])
    c = lm_config(task, **{"data.synthetic": True, "data.lm_num_widths": 3})
    source = lm_pipeline.open_lm_source(c, task["train"], tok, task["corpus"])
    n_train = sum(1 for _ in open(task["train"]))
    n_docs = sum(1 for _ in open(task["corpus"]))
    assert len(source) == n_train + n_docs
    assert int(np.sum(source.kinds == lm_pipeline.PASSAGE)) == n_docs
    rec = json.loads(open(task["train"]).readline())
    want = "Instruct: " + rec["prompt"] + "\nQuery: " + rec["query"] + rec["reasoning_query"]
    assert tok.decode(source.rows[0][:-1]) == want and source.rows[0][-1] == tok.eos_token_id
    assert source.location(1) == f"{task['train']}: line 2"
    assert source.location(n_train) == f"{task['corpus']}: line 1"
    opts = lm_pipeline.LMOptions(batch_size=8, num_widths=3, sort_batches=4, seed=3)
    a = lm_pipeline.LMStepBatcher(source, tok, opts)
    b = lm_pipeline.LMStepBatcher(source, tok, opts)
    spe = a.steps_per_epoch
    for step in (spe + 3, 0, 5, spe + 3):  # any order: a batch is a function of its step alone
        x, y = a(step), b(step)
        for k in ("ids", "mask", "record"):
            np.testing.assert_array_equal(x[k], y[k])
        assert x["ids"].shape[1] in a.widths and x["mask"].sum(1).max() <= x["ids"].shape[1]
        lens = source.lengths[x["record"]]
        np.testing.assert_array_equal(x["mask"].sum(1), lens)  # nothing cut, left padded
        assert (x["mask"][:, -1] == 1).all()
    epoch = np.concatenate([a(s)["record"] for s in range(spe)])
    assert len(set(epoch.tolist())) == len(epoch) == spe * 8  # every row at most once per epoch
    assert not np.array_equal(a.epoch_batches(0), a.epoch_batches(1))
    # length grouping: padding is much less than padding every batch to the longest row
    pad = np.mean([1 - a(s)["mask"].mean() for s in range(spe)])
    assert pad < 1 - source.lengths.mean() / source.lengths.max()
    # the default (no grouping): random batches, still a function of the step alone
    plain = dict(batch_size=8, num_widths=3, seed=3)
    c, d = lm_pipeline.LMStepBatcher(source, tok, lm_pipeline.LMOptions(**plain)), \
        lm_pipeline.LMStepBatcher(source, tok, lm_pipeline.LMOptions(**plain))
    np.testing.assert_array_equal(c(spe + 1)["ids"], d(spe + 1)["ids"])
    epoch = np.concatenate([c(s)["record"] for s in range(spe)])
    assert len(set(epoch.tolist())) == len(epoch)
    assert np.std([source.lengths[c(s)["record"]].mean() for s in range(spe)]) < \
        np.std([source.lengths[a(s)["record"]].mean() for s in range(spe)])  # mixed lengths per batch


@pytest.fixture(scope="module")
def lm_rows(task):
    from laser_jax.inference.load import load_tokenizer

    tok = load_tokenizer(task["tokenizer"])
    c = lm_config(task, **{"data.synthetic": True})
    return tok, lm_pipeline.open_lm_source(c, task["train"], tok, task["corpus"])


def test_packed_rows_hold_every_document_once_and_a_batch_is_a_function_of_its_step(lm_rows):
    from laser_jax.data.lm_packing import PackedStepBatcher

    tok, source = lm_rows
    opts = lm_pipeline.LMOptions(batch_size=4, pack_len=160, seed=3)
    a, b = PackedStepBatcher(source, tok.pad_token_id, opts), PackedStepBatcher(source, tok.pad_token_id, opts)
    packed = np.concatenate(a.rows)
    np.testing.assert_array_equal(np.sort(packed), np.arange(len(source)))  # every document once, whole
    assert max(int(source.lengths[r].sum()) for r in a.rows) <= 160
    assert a.fill > 0.85 > source.lengths.mean() / source.lengths.max()  # far less padding than padded rows
    spe = a.steps_per_epoch
    for step in (spe + 2, 0, 3, spe + 2):  # any order: a batch is a function of its step alone
        x, y = a(step), b(step)
        for k in ("ids", "mask", "segments", "record"):
            np.testing.assert_array_equal(x[k], y[k])
    x = a(1)
    assert x["ids"].shape == x["segments"].shape == (4, 160)
    np.testing.assert_array_equal(x["mask"], (x["segments"] > 0).astype(np.int32))
    docs = iter(x["record"].tolist())
    for row_ids, row_seg in zip(x["ids"], x["segments"]):  # documents in order, numbered 1, 2, ..., then padding
        for s in range(1, row_seg.max() + 1):
            np.testing.assert_array_equal(row_ids[row_seg == s], source.rows[next(docs)])
        real = int((row_seg > 0).sum())
        assert (row_seg[:real] > 0).all() and (row_ids[real:] == tok.pad_token_id).all()
    assert next(docs, None) is None
    assert len(set(a.epoch_batches(0).reshape(-1).tolist())) == spe * 4  # every packed row at most once an epoch
    assert not np.array_equal(a.epoch_batches(0), a.epoch_batches(1))  # reshuffled each epoch
    with pytest.raises(ConfigError, match=r"data.lm_pack_len: 40 tokens cannot hold a document of \d+ tokens"):
        PackedStepBatcher(source, tok.pad_token_id, lm_pipeline.LMOptions(batch_size=4, pack_len=40))


def test_packed_loss_and_gradients_equal_the_padded_ones_on_the_same_documents(lm_rows):
    """Attention and positions stay inside each document: the packed rows' loss is the one
    the same documents give one per (left-padded) row."""
    from laser_jax.data.lm_packing import PackedStepBatcher
    from laser_jax.data.tokenize import left_pad

    tok, source = lm_rows
    packed = PackedStepBatcher(source, tok.pad_token_id, lm_pipeline.LMOptions(batch_size=3, pack_len=200))(0)
    docs = [source.rows[i] for i in packed["record"]]
    assert len(docs) > 3 * 2  # several documents per row
    ids, mask = left_pad(docs, max(len(d) for d in docs), tok.pad_token_id)
    cfg = preset("tiny_qwen3", vocab_size=768, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, param_dtype="float32",
                 compute_dtype="float32", scan_layers=False)
    model, variables = Decoder(cfg), init_variables(cfg, jax.random.key(0))

    loss = jax.jit(lambda batch: jax.value_and_grad(lambda v: causal_lm_objective(model, v, batch),
                                                    has_aux=True)(variables))

    (lp, mp), gp = loss({k: jnp.asarray(packed[k]) for k in ("ids", "mask", "segments")})
    (lu, mu), gu = loss({"ids": jnp.asarray(ids), "mask": jnp.asarray(mask)})
    assert float(mp["targets"]) == float(mu["targets"]) == sum(len(d) - 1 for d in docs)
    np.testing.assert_allclose(float(lp), float(lu), rtol=1e-5)
    np.testing.assert_allclose(float(mp["acc"]), float(mu["acc"]), atol=1e-6)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_packing_config_problems_name_their_fields(task):
    with pytest.raises(ConfigError, match=r"data.lm_pack_len: must be 0 \(no packing\) or hold the longest LM row"):
        lm_config(task, **{"data.lm_pack_len": 100})  # explicit_max_len 128: rows up to 129 tokens
    with pytest.raises(ConfigError, match="data.lm_sort_batches: length grouping is for padded"):
        lm_config(task, **{"data.lm_pack_len": 160, "data.lm_sort_batches": 4})


def test_text_jsonl_rows(tmp_path, task):
    from laser_jax.inference.load import load_tokenizer

    tok = load_tokenizer(task["tokenizer"])
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": f"Take {i} and add {i + 1}."}) + "\n" for i in range(20)))
    assert lm_pipeline.detect_format(str(path)) == "text"
    assert lm_pipeline.detect_format(task["train"]) == "reasonemb"
    c = lm_config(task, **{"data.train_files": str(path), "data.lm_max_len": 6})
    source = lm_pipeline.open_lm_source(c, str(path), tok)
    assert len(source) == 20 and source.lengths.max() == 6 and source.truncated == 20
    assert all(r[-1] == tok.eos_token_id for r in source.rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: field .text."):
        lm_pipeline.read_text_jsonl(str(bad))


def _rows(workdir):
    return read_metrics(str(workdir))


@pytest.mark.parametrize("pack_len", [0, 192], ids=["padded", "packed"])
def test_causal_lm_run_resumed_equals_uninterrupted(task, tmp_path, pack_len):
    over = {"train.num_steps": 4, "data.shuffle": True, "train.schedule": "cosine", "train.min_lr_ratio": 0.1,
            "train.warmup_steps": 1, "data.lm_pack_len": pack_len}
    straight = loop.train(set_up(lm_config(task, **over), str(tmp_path / "straight")))
    first = lm_config(task, **over, **{"checkpoint.every_steps": 2})
    trained = loop.train(set_up(first, str(tmp_path / "resumed")), until=2)
    assert trained.checkpointer().latest_step() == 2
    loop.train(set_up(first, str(tmp_path / "resumed")))
    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "acc", "learning_rate", "l2_grads", "l2_params"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-6, err_msg=key)
    assert all(r["tokens_per_s"] > 0 for r in a)
    assert a[0]["loss"] > a[-1]["loss"] - 5  # finite and logged
    assert straight.metrics["loss"] == pytest.approx(a[-1]["loss"])


def test_causal_lm_gradient_accumulation_runs(task, tmp_path):
    """Two micro-batches of 4 rows: the step runs and logs finite LM metrics."""
    c = lm_config(task, **{"train.grad_accum_steps": 2, "train.num_steps": 1})
    trained = loop.train(set_up(c, str(tmp_path / "acc")))
    rows = _rows(tmp_path / "acc")
    assert [r["step"] for r in rows] == [1] and np.isfinite(rows[0]["loss"]) and trained.skipped_steps == []


def test_causal_lm_with_lora_trains_only_the_adapters(task, tmp_path):
    c = lm_config(task, **{"lora.rank": 4, "train.num_steps": 2})
    trained = loop.train(set_up(c, str(tmp_path / "lora")))
    assert set(trained.state.trainable) == {"lora"} and set(trained.state.frozen) == {"params"}
    rows = _rows(tmp_path / "lora")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) and r["l2_grads"] > 0 for r in rows)
