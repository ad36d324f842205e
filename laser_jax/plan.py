"""`python -m laser_jax.plan`: the command line of laser_jax.train.plan."""
from laser_jax.train.plan import run

if __name__ == "__main__":
    run()
