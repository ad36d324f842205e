"""`python -m laser_jax.evaluate`: the command line of laser_jax.inference.evaluate."""
import sys

from laser_jax.inference.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
