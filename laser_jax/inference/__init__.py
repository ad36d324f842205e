"""Loading trained models and serving them: encoder, export, evaluation, other clients."""
from laser_jax.inference.quiet import install_log_filters

install_log_filters()  # before transformers and jax are imported (see quiet.py)
