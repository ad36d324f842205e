"""LoRA dropout's keep-masks (model/dropout.py): 16 random bits per element, four per threefry hash."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax.extend.random import threefry2x32_p

from laser_jax.model.dropout import keep_mask, random_halfwords, rounded_keep, threefry2x32


def test_keep_probability_is_rounded_to_sixteen_bits_and_bad_rates_are_refused():
    assert rounded_keep(0.1) == 58982 / 65536 and abs(rounded_keep(0.1) - 0.9) < 1 / 131072
    assert rounded_keep(0.0) == 1.0 and rounded_keep(0.5) == 0.5
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout rate"):
            rounded_keep(bad)


def test_the_hash_is_threefry_2x32_bit_for_bit():
    """Random123's known answers (Threefry-2x32, 20 rounds), and JAX's own primitive on random
    keys and counters."""
    u = jnp.uint32
    assert [int(w) for w in threefry2x32(u(0), u(0), u(0), u(0))] == [0x6B200159, 0x99BA4EFE]
    ones = u(0xFFFFFFFF)
    assert [int(w) for w in threefry2x32(ones, ones, ones, ones)] == [0x1CB996FC, 0xBB002BE7]
    rng = np.random.default_rng(0)
    for _ in range(3):
        k1, k2 = (u(int(k)) for k in rng.integers(0, 2 ** 32, 2))
        x1, x2 = (jnp.asarray(x) for x in rng.integers(0, 2 ** 32, (2, 4099), dtype=np.uint32))
        ours = jax.jit(threefry2x32)(k1, k2, x1, x2)
        theirs = threefry2x32_p.bind(k1, k2, x1, x2)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_masks_keep_at_the_rounded_rate(rate):
    mask, keep = keep_mask(jax.random.key(0), rate, (64, 4, 1001))
    m = np.asarray(mask, np.float64)
    assert m.shape == (64, 4, 1001) and keep == rounded_keep(rate)
    assert abs(m.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / m.size)  # five standard errors


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_halfwords_are_uniform_and_the_four_draws_of_one_hash_uncorrelated(impl):
    shape = (32, 3, 1001)  # the last axis is not a multiple of four
    w = np.asarray(jax.jit(random_halfwords, static_argnums=1)(jax.random.key(1, impl=impl), shape), np.float64)
    assert w.shape == shape and w.min() >= 0 and w.max() < 65536
    n = w.size
    assert abs(w.mean() - 32767.5) < 5 * 65536 / np.sqrt(12 * n)
    assert abs(w.std() - 65536 / np.sqrt(12)) < 0.01 * 65536 / np.sqrt(12)
    m = -(-shape[-1] // 4)  # elements i, i + m, i + 2m, i + 3m share a hash
    quarters = [w[..., k * m:(k + 1) * m][..., :shape[-1] - 3 * m].ravel() for k in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert abs(np.corrcoef(quarters[a], quarters[b])[0, 1]) < 0.02
    # neighbours along the other axes (other counters) are uncorrelated too
    assert abs(np.corrcoef(w[:, 0].ravel(), w[:, 1].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(w[:16].ravel(), w[16:].ravel())[0, 1]) < 0.02


def test_masks_are_a_function_of_the_key():
    a, _ = keep_mask(jax.random.key(3), 0.1, (8, 16))
    b, _ = keep_mask(jax.random.key(3), 0.1, (8, 16))
    c, _ = keep_mask(jax.random.key(4), 0.1, (8, 16))
    np.testing.assert_array_equal(a, b)
    assert bool(jnp.any(a != c))


def test_masks_do_not_depend_on_how_they_are_sharded():
    """The counters are positions, so each device hashes only its own shard and the masks are
    those of one device (no gather of a flat counter)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    devices = np.asarray(jax.devices()[:8])
    if devices.size < 2:
        pytest.skip("one device")
    mesh = Mesh(devices.reshape(2, -1), ("a", "b"))
    shape = (3, 8, 16, 40)
    one = keep_mask(jax.random.key(7), 0.1, shape)[0]
    sharded = jax.jit(lambda k: keep_mask(k, 0.1, shape)[0],
                      out_shardings=NamedSharding(mesh, P(None, "a", "b")))(jax.random.key(7))
    assert len(sharded.sharding.device_set) == devices.size
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(one))
