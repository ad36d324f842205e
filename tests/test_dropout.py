"""LoRA dropout's keep-masks (model/dropout.py): 16 random bits per element, two per word."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from laser_jax.model.dropout import keep_mask, rounded_keep


def test_keep_probability_is_rounded_to_sixteen_bits_and_bad_rates_are_refused():
    assert rounded_keep(0.1) == 58982 / 65536 and abs(rounded_keep(0.1) - 0.9) < 1 / 131072
    assert rounded_keep(0.0) == 1.0 and rounded_keep(0.5) == 0.5
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout rate"):
            rounded_keep(bad)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_masks_keep_at_the_rounded_rate_with_independent_halves(rate):
    mask, keep = jax.jit(lambda k: keep_mask(k, rate, (64, 4, 1001)), static_argnums=())(jax.random.key(0))
    m = np.asarray(mask, np.float64)
    assert m.shape == (64, 4, 1001) and keep == rounded_keep(rate)
    n = m.size
    assert abs(m.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)  # five standard errors
    # the two halves of one word, and neighbours in the other axes, are uncorrelated
    lo, hi = m[..., :500].ravel(), m[..., 501:1001].ravel()
    for a, b in ((lo, hi), (m[:, 0].ravel(), m[:, 1].ravel()), (m[:32].ravel(), m[32:].ravel())):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def test_masks_are_a_function_of_the_key():
    a, _ = keep_mask(jax.random.key(3), 0.1, (8, 16))
    b, _ = keep_mask(jax.random.key(3), 0.1, (8, 16))
    c, _ = keep_mask(jax.random.key(4), 0.1, (8, 16))
    np.testing.assert_array_equal(a, b)
    assert bool(jnp.any(a != c))
