"""`python -m laser_jax.export`: the command line of laser_jax.inference.export."""
import sys

from laser_jax.inference.export import main

if __name__ == "__main__":
    sys.exit(main())
