"""Tokenization, left padding, length buckets and re-padding."""
import numpy as np
import pytest

from laser_jax.data.tokenize import (Bucketing, bucket_length, bucket_lengths, left_pad,
                                     batch_lengths, pad_token_id, repad_left, tokenize_batch,
                                     tokenize_texts)

TEXTS = ["What is 1 plus 2?", "", "First, take 3.\n\nThen add 4 to it\n\nSo the result is 7.",
         "cats and the weather in a town " * 6]


def test_tokenize_matches_one_call_per_text_right_truncated(tokenizer):
    for max_len in (3, 8, 1000):
        rows = tokenize_texts(tokenizer, TEXTS, max_len)
        assert rows == [tokenizer(t, add_special_tokens=True)["input_ids"][:max_len] for t in TEXTS]


def test_truncation_is_on_the_right_even_if_tokenizer_says_left(tokenizer):
    tokenizer.truncation_side = "left"
    try:
        rows = tokenize_texts(tokenizer, TEXTS[2:3], 4)
    finally:
        tokenizer.truncation_side = "right"
    assert rows[0] == tokenizer(TEXTS[2])["input_ids"][:4]


def test_tokenize_batch_left_pads_to_bucket(tokenizer):
    ids, mask = tokenize_batch(tokenizer, TEXTS, 64)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.shape == (4, bucket_length(max(mask.sum(1)), 64))
    pad = pad_token_id(tokenizer)
    for i, text in enumerate(TEXTS):
        row = tokenizer(text)["input_ids"][:64]
        n = len(row)
        assert mask[i].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert ids[i].tolist() == [pad] * (ids.shape[1] - n) + row
    exact, _ = tokenize_batch(tokenizer, TEXTS, 64, bucketing=None)
    assert exact.shape[1] == 64


def test_pad_falls_back_to_eos():
    class Tok:
        pad_token_id, eos_token_id = None, 5
    assert pad_token_id(Tok()) == 5


def test_bucket_lengths():
    assert bucket_lengths(512) == (64, 128, 256, 512)
    assert bucket_lengths(100) == (16, 32, 64, 112)          # rounded up to multiples of 16
    assert bucket_lengths(1024, fractions=(0.5,)) == (512, 1024)
    assert [bucket_length(n, 512) for n in (0, 1, 64, 65, 300, 512)] == [64, 64, 64, 128, 512, 512]
    assert bucket_length(17, 512, fractions=None) == 32
    assert Bucketing(multiple=8, fractions=None).length(3, 512) == 8
    with pytest.raises(ValueError):
        bucket_length(513, 512)


def test_left_pad_empty_rows_and_overflow():
    ids, mask = left_pad([[1, 2], [], [3]], 4, 0)
    assert ids.tolist() == [[0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 3]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError):
        left_pad([[1, 2, 3]], 2, 0)


def test_repad_left_widens_and_shifts_segments():
    batch = {"q_ids": np.array([[0, 7]], np.int32), "q_mask": np.array([[0, 1]], np.int32),
             "e_ids": np.array([[5, 6, 7]], np.int32), "e_mask": np.array([[1, 1, 1]], np.int32),
             "e_seg": np.array([[1, 3]], np.int32), "record": np.array([4], np.int32)}
    out = repad_left(batch, {"q": 2, "e": 5}, pad_id=0)
    assert out["q_ids"] is batch["q_ids"]
    assert out["e_ids"].tolist() == [[0, 0, 5, 6, 7]]
    assert out["e_mask"].tolist() == [[0, 0, 1, 1, 1]]
    assert out["e_seg"].tolist() == [[3, 5]] and out["e_seg"].dtype == np.int32
    # the segment still points at the same token, and the EOS index is the new length
    assert out["e_ids"][0, out["e_seg"][0, 0]] == batch["e_ids"][0, 1]
    with pytest.raises(ValueError, match="cannot shrink"):
        repad_left(batch, {"e": 2}, pad_id=0)
    with pytest.raises(ValueError, match="unknown view"):
        repad_left(batch, {"x": 9})
    assert batch_lengths(batch) == {"q": 2, "e": 3}
    # without pad_id the view's own padding id is reused (0 if it has no padding)
    batch["q_ids"] = np.array([[3, 7]], np.int32)
    assert repad_left(batch, {"q": 4})["q_ids"].tolist() == [[3, 3, 3, 7]]
    assert repad_left(batch, {"e": 4})["e_ids"].tolist() == [[0, 5, 6, 7]]


def test_inference_widths_follow_the_batch_not_the_maximum():
    from laser_jax.data.tokenize import INFERENCE_BUCKETING, batch_width

    widths = [batch_width(n, 8192) for n in (0, 1, 16, 17, 20, 33, 48, 49, 64, 65, 128, 129, 1000, 8192)]
    assert widths == [16, 16, 16, 32, 32, 48, 48, 64, 64, 128, 128, 256, 1024, 8192]
    assert INFERENCE_BUCKETING.length(20, 8192) == 32       # not 1024 (1/8 of 8192)
    assert batch_width(300, 300) == 300 and batch_width(70, 100) == 100  # capped at max_len
    assert len({batch_width(n, 8192) for n in range(8193)}) == 4 + 7     # 16..64, 128..8192
    with pytest.raises(ValueError, match="longer than max_len"):
        batch_width(513, 512)
