"""laser_jax: JAX/Flax training and inference for LaSER reasoning-aware dense retrievers."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import laser_jax` stays cheap and jax is imported only when needed.
    if name == "LaserEncoder":
        from laser_jax.inference.encoder import LaserEncoder

        return LaserEncoder
    raise AttributeError(f"module 'laser_jax' has no attribute {name!r}")


__all__ = ["LaserEncoder", "__version__"]
