"""`python -m laser_jax.train --config=configs/tiny.py --workdir=DIR` (see laser_jax.train.main)."""
import sys

from laser_jax.train.main import main

if __name__ == "__main__":
    sys.exit(main())
