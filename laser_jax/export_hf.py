"""`python -m laser_jax.export_hf`: the command line of laser_jax.inference.export_hf."""
import sys

from laser_jax.inference.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
