"""The grain training pipeline: batches against a from-the-spec oracle, document choice,
shuffling, iterator state (get/set and Orbax), and host sharding."""
import json

import numpy as np
import pytest
import torch

from laser_jax.data.errors import ConfigError
from laser_jax.data.pipeline import (PipelineOptions, steps_per_epoch, tokenize_batch,
                                     train_dataset, train_iterator)
from laser_jax.data.records import Record
from laser_jax.data.sources import open_records
from laser_jax.data.sampling import choose_documents, epoch_order
from laser_jax.data.tokenize import batch_lengths, repad_left

KEYS = ("q_ids", "q_mask", "d_ids", "d_mask", "e_ids", "e_mask", "e_seg", "record")


def make_raw(n):
    """n records with varied positives / negatives / reasoning (short, long, "\\n\\n" first)."""
    out = []
    for i in range(n):
        steps = "\n\n".join(f"Then add {k} to it" for k in range(i % 5))
        reasoning = "ok" if i % 7 == 3 else f"First, take {i}.\n\n{steps}\n\nSo the result is {i}."
        if i % 4 == 1:
            reasoning = reasoning * 6          # long: cut by explicit truncation
        query = f"What is {i} plus {i % 3}?"
        if i % 6 == 5:       # reasoning starts with "\n\n": a split token right at the region start
            query, reasoning = query[:-1], "\n\n" + reasoning
        out.append({
            "query": query,
            "prompt": "Given a question, retrieve passages that answer it.",
            "reasoning_query": reasoning,
            "positive_passages": [f"The number {i + k} is the sum." for k in range(1 + i % 2)],
            "negative_passages": [f"Some describe cats {i}.{k}" for k in range(1 + i % 3)],
        })
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_raw(24)))
    return open_records(str(path), group_size=3)


def options(**kw):
    base = dict(batch_size=4, group_size=3, num_thinking_steps=3, query_max_len=48,
                doc_max_len=32, explicit_max_len=80, shuffle=False, seed=0, num_epochs=2,
                num_threads=1, prefetch=2)
    base.update(kw)
    return PipelineOptions(**base)


# ----------------------------------------------------------------------------------------
# An independent, deliberately plain reading of spec sections 3, 5 and 6.
def oracle_batch(tokenizer, records, indices, epoch, opts):
    def wrap(text):
        if not opts.chat_template:
            return text
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True) + "<think>\n\n</think>\n\n"

    def tokens(text, max_len):
        return tokenizer(text, add_special_tokens=True)["input_ids"][:max_len]

    def width(n, max_len):
        for w in (max_len // 8, max_len // 4, max_len // 2, max_len):
            w = max(16, -(-w // 16) * 16)
            if w >= n:
                return w

    def pad_rows(rows, max_len):
        w = width(max(len(r) for r in rows), max_len)
        ids = [[tokenizer.pad_token_id] * (w - len(r)) + r for r in rows]
        mask = [[0] * (w - len(r)) + [1] * len(r) for r in rows]
        return np.array(ids), np.array(mask)

    queries, docs, explicit = [], [], []
    for rec in records:
        q = wrap(f"Instruct: {rec.prompt}\nQuery: {rec.query}")
        queries.append(q)
        k = opts.group_size - 1
        group = [rec.positives[epoch % len(rec.positives)]]
        group += [rec.negatives[(epoch * k + j) % len(rec.negatives)] for j in range(k)]
        docs += [wrap(d) for d in group]
        reasoning = rec.reasoning if len(rec.reasoning) >= 5 else rec.query
        explicit.append(q + reasoning)
    q_ids, q_mask = pad_rows([tokens(t, opts.query_max_len) for t in queries], opts.query_max_len)
    d_ids, d_mask = pad_rows([tokens(t, opts.doc_max_len) for t in docs], opts.doc_max_len)
    e_ids, e_mask = pad_rows([tokens(t, opts.explicit_max_len) for t in explicit],
                             opts.explicit_max_len)
    split = tokenizer.encode("\n\n", add_special_tokens=False)[-1]
    J, Le = opts.num_thinking_steps, e_ids.shape[1]
    e_seg = []
    for b in range(len(records)):
        start = int((e_mask[b] == 0).sum()) + int(q_mask[b].sum())
        if start >= Le:
            e_seg.append([Le] * J)
            continue
        ends = [p for p in range(start, Le) if e_ids[b, p] == split]
        if not ends or ends[-1] != Le - 1:
            ends.append(Le - 1)
        if len(ends) < J:
            e_seg.append(ends + [ends[-1]] * (J - len(ends)))
        else:
            e_seg.append([ends[i] for i in torch.linspace(0, len(ends) - 1, J).long().tolist()])
    return {"q_ids": q_ids, "q_mask": q_mask, "d_ids": d_ids, "d_mask": d_mask,
            "e_ids": e_ids, "e_mask": e_mask, "e_seg": np.array(e_seg), "record": np.array(indices)}


def assert_batches_equal(got, want):
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert got[key].dtype == np.int32, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def row_cases(batch, opts):
    """Which segment situations the rows of a batch exercise."""
    cases = set()
    le, j = batch["e_ids"].shape[1], opts.num_thinking_steps
    for b in range(len(batch["record"])):
        seg = batch["e_seg"][b].tolist()
        n = int(batch["e_mask"][b].sum())
        cases.add("truncated" if n == opts.explicit_max_len else "whole")
        if seg == [le] * j:
            cases.add("empty region")
        elif len(set(seg)) == 1:
            cases.add("no split token")
        elif len(set(seg)) < j:
            cases.add("fewer segments than J")
        else:
            cases.add("J or more segments")
    return cases


@pytest.mark.parametrize("chat,explicit_max_len,expected_cases", [
    (True, 80, {"truncated", "whole", "no split token", "fewer segments than J",
                "J or more segments"}),
    (False, 80, {"truncated", "whole", "no split token", "fewer segments than J",
                 "J or more segments"}),
    (True, 32, {"truncated", "empty region"}),       # explicit view cut inside the query
    # reasoning cut to its first token or two (and for some rows inside the query)
    (True, 43, {"truncated", "no split token", "fewer segments than J", "empty region"}),
])
def test_batches_match_the_spec_oracle(tokenizer, source, chat, explicit_max_len, expected_cases):
    opts = options(chat_template=chat, explicit_max_len=explicit_max_len)
    dataset = train_dataset(source, tokenizer, opts)
    assert len(dataset) == 2 * 24 // 4
    cases = set()
    for step in (0, 1, 5, 6, 9):   # epoch 0 and epoch 1 (rotated documents)
        epoch, k = divmod(step, 6)
        indices = list(range(4 * k, 4 * k + 4))
        batch = dataset[step]
        want = oracle_batch(tokenizer, [source[i] for i in indices], indices, epoch, opts)
        assert_batches_equal(batch, want)
        cases |= row_cases(batch, opts)
    assert cases == expected_cases


def test_first_step_is_file_order_and_positive_row_layout(tokenizer, source):
    batch = next(train_iterator(source, tokenizer, options(batch_size=8, chat_template=False)))
    assert batch["record"].tolist() == list(range(8))
    ids, mask = tokenize_batch(tokenizer, [source[i].positives[0] for i in range(8)], 32)
    positives = batch["d_ids"][0::3]    # query i's positive at row i*G
    for i in range(8):
        assert ids[i][mask[i] == 1].tolist() == positives[i][batch["d_mask"][0::3][i] == 1].tolist()


def test_deterministic_document_choice_rotates_per_epoch():
    rec = Record("q", "p", "r", ("p0", "p1"), ("n0", "n1", "n2"))
    pick = [choose_documents(rec, 0, e, 3, shuffle=False, seed=0) for e in range(3)]
    assert pick == [("p0", "n0", "n1"), ("p1", "n2", "n0"), ("p0", "n1", "n2")]
    few = Record("q", "p", "r", ("p0",), ("n0",))
    assert choose_documents(few, 0, 0, 4, False, 0) == ("p0", "n0", "n0", "n0")
    assert choose_documents(few, 0, 0, 1, False, 0) == ("p0",)


def test_group_size_must_match_validation(tokenizer, tmp_path):
    path = tmp_path / "few.jsonl"
    raw = make_raw(8)
    raw[5]["negative_passages"] = []
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    loose = open_records(str(path), group_size=1)
    with pytest.raises(ConfigError, match="validated for group_size=1"):
        train_dataset(loose, tokenizer, options())
    train_dataset(loose, tokenizer, options(group_size=1))
    with pytest.raises(ValueError, match="record 5 has no negative passages"):
        choose_documents(loose[5], 5, 0, 2, False, 0)


def test_seeded_document_choice():
    rec = Record("q", "p", "r", tuple(f"p{k}" for k in range(4)), tuple(f"n{k}" for k in range(6)))
    runs = [[choose_documents(rec, 7, e, 3, True, seed=1) for e in range(4)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert sorted(d[0] for d in runs[0]) == ["p0", "p1", "p2", "p3"]   # positives cycle
    assert all(len(set(d[1:])) == 2 and all(n.startswith("n") for n in d[1:]) for d in runs[0])
    others = [choose_documents(rec, r, 0, 3, True, seed=1) for r in range(20)]
    assert len({d[0] for d in others}) > 1                              # per-record hash
    few = Record("q", "p", "r", ("p0",), ("n0", "n1"))
    assert len(choose_documents(few, 0, 0, 5, True, 0)) == 5


def test_shuffled_order_is_seeded_per_epoch(tokenizer, source):
    e0, e1 = epoch_order(24, 0, True, 3), epoch_order(24, 1, True, 3)
    assert sorted(e0.tolist()) == list(range(24)) and not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, epoch_order(24, 0, True, 3))
    opts = options(shuffle=True, seed=3)
    a = [b["record"].tolist() for b in train_iterator(source, tokenizer, opts)]
    b = [b["record"].tolist() for b in train_iterator(source, tokenizer, opts)]
    assert a == b and len(a) == 12
    assert sorted(sum(a[:6], [])) == list(range(24)) and a[:6] != a[6:]
    assert sum(a[:6], []) == e0.tolist()
    c = [b["record"].tolist() for b in train_iterator(source, tokenizer, options(shuffle=True,
                                                                                seed=4))]
    assert c != a


def test_iterator_state_round_trip(tokenizer, source):
    opts = options(shuffle=True, seed=5)
    it = train_iterator(source, tokenizer, opts)
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = [next(it) for _ in range(4)]
    fresh = train_iterator(source, tokenizer, opts)
    fresh.set_state(state)
    for want in rest:
        assert_batches_equal(next(fresh), want)
    started = train_iterator(source, tokenizer, opts, start_step=3)
    assert_batches_equal(next(started), rest[0])


def test_iterator_state_through_orbax(tokenizer, source, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    opts = options(shuffle=True, seed=6)
    it = train_iterator(source, tokenizer, opts)
    for _ in range(2):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    want = [next(it) for _ in range(3)]
    fresh = train_iterator(source, tokenizer, opts)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for batch in want:
        assert_batches_equal(next(fresh), batch)


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_hosts_shares_concatenate_to_one_host_batch(tokenizer, source, shuffle):
    one = train_dataset(source, tokenizer, options(batch_size=6, shuffle=shuffle, seed=2))
    hosts = [train_dataset(source, tokenizer,
                           options(batch_size=3, shuffle=shuffle, seed=2, process_index=p,
                                   process_count=2)) for p in range(2)]
    assert len(one) == len(hosts[0]) == len(hosts[1]) == 8
    pad = tokenizer.pad_token_id
    for step in (0, 3, 4, 7):
        whole, shares = one[step], [h[step] for h in hosts]
        lengths = {v: max(batch_lengths(s)[v] for s in shares) for v in "qde"}
        assert lengths == batch_lengths(whole)
        shares = [repad_left(s, lengths, pad if shuffle else None) for s in shares]
        joined = {k: np.concatenate([s[k] for s in shares]) for k in KEYS}
        assert_batches_equal(joined, whole)


def test_epochs_and_errors(tokenizer, source):
    assert steps_per_epoch(24, options(batch_size=5)) == 4          # remainder dropped
    assert len(list(train_iterator(source, tokenizer, options(num_epochs=1)))) == 6
    forever = train_dataset(source, tokenizer, options(num_epochs=None))
    assert len(forever) > 10 ** 12
    np.testing.assert_array_equal(forever[6 * 1000]["record"], [0, 1, 2, 3])
    it = train_iterator(source, tokenizer, options(num_epochs=None), start_step=6 * 1000 + 1)
    np.testing.assert_array_equal(next(it)["record"], [4, 5, 6, 7])
    with pytest.raises(ConfigError, match="cannot fill one global batch"):
        train_dataset(source, tokenizer, options(batch_size=13, process_count=2))
    for bad in (dict(batch_size=0), dict(process_index=2, process_count=2),
                dict(segment_rule="x"), dict(split_mode="x"), dict(num_epochs=0),
                dict(query_template="Instruct: {instruction}")):
        with pytest.raises(ConfigError):
            options(**bad)
