"""`python -m laser_jax.plan`: the command line of laser_jax.train.plan."""
import sys

from laser_jax.train.plan import main

if __name__ == "__main__":
    sys.exit(main())
