"""FLOP accounting: the 6PT convention and the matmuls each LoRA/remat setting runs."""
import pytest

from laser_jax.model.config import preset
from laser_jax.train.flops import encode_flops, peak_rates, throughput, train_step_flops

# Short rows on a 0.6B architecture: attention is negligible next to the projections.
SHAPES = {"q_ids": (8, 8), "d_ids": (16, 8), "e_ids": (8, 16)}


def _ratio(**kw):
    cfg = preset("qwen3_0_6b", **kw)
    f = train_step_flops(cfg, SHAPES, num_steps=1, explicit=True)
    return f.executed / f.model_6pt


@pytest.mark.parametrize("kw,expected", [
    (dict(lora_rank=0, remat_policy="none"), 6.0),   # forward 2, activation grads 2, weight grads 2
    (dict(lora_rank=0, remat_policy="full"), 8.0),   # + the forward again
    (dict(lora_rank=1, remat_policy="none"), 4.0),   # no base weight gradients
    (dict(lora_rank=1, remat_policy="full"), 6.0),
    (dict(lora_rank=1, remat_policy="dots"), 4.0),   # matmul outputs saved: nothing recomputed
])
def test_executed_flops_follow_the_lora_and_remat_setting(kw, expected):
    assert _ratio(**kw) * 6 == pytest.approx(expected, rel=0.01)


def test_lora_adapters_and_soft_steps_add_their_own_matmuls():
    cfg = preset("qwen3_0_6b", lora_rank=64)
    no_adapters = preset("qwen3_0_6b", lora_rank=64, lora_targets=("q_proj",))
    assert train_step_flops(cfg, SHAPES, 1, True).executed > train_step_flops(no_adapters, SHAPES, 1, True).executed
    k1, k3 = (train_step_flops(cfg, SHAPES, k, True) for k in (1, 3))
    # two soft steps per latent row: two more positions plus two LM-head passes (logits, expected embedding)
    rows = 8 + 16
    lm = 4.0 * cfg.vocab_size * cfg.hidden_size * 2 * rows * 2  # forward + activation grads (LoRA: table frozen)
    assert k3.executed - k1.executed > lm
    enc1, enc3 = encode_flops(cfg, 4, 32, 1), encode_flops(cfg, 4, 32, 3)
    assert enc1.model_6pt == pytest.approx(2 * cfg.num_params(include_embeddings=False) * 4 * 32)
    assert enc3.executed - enc1.executed > 4.0 * cfg.vocab_size * cfg.hidden_size * 2 * 4


def test_mfu_is_reported_against_both_peaks_when_known():
    peaks = peak_rates("NVIDIA H200")
    assert peaks == {"datasheet": 989.0, "measured": 804.0}
    assert peak_rates("cpu") == {"datasheet": None, "measured": None}
    assert peak_rates("NVIDIA H100 80GB HBM3", override=900.0)["datasheet"] == 900.0
    cfg = preset("qwen3_0_6b", lora_rank=64)
    f = train_step_flops(cfg, SHAPES, 3, True)
    t = throughput(f, 0.5, 1, peaks)
    assert t["tflops_per_s"] == pytest.approx(f.executed / 0.5 / 1e12)
    assert t["mfu"] == pytest.approx(t["tflops_per_s"] / 989.0)
    assert t["mfu_measured_peak"] == pytest.approx(t["tflops_per_s"] / 804.0)
    assert set(throughput(f, 0.5, 1, peak_rates("cpu"))) == {"tflops_per_s", "model_tflops_per_s"}
