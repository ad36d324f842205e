"""`python -m laser_jax.train --config=configs/tiny.py --workdir=DIR` (see laser_jax.train.main)."""
from laser_jax.train.main import run

if __name__ == "__main__":
    run()
