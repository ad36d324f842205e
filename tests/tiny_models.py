"""Tiny random models as `LoadedModel`s (the experiments' tests: rewrite, latency, thoughts)."""
import jax

from laser_jax.data.formatting import TextFormat
from laser_jax.inference.load import LoadedModel
from laser_jax.model.config import preset
from laser_jax.model.decoder import init_variables


def tiny_loaded(tokenizer, seed=0, scale=1.0, steps=3):
    """A random 1-layer, 32-wide Qwen3-style model (float32, vocab 512 >= the test tokenizers')
    with every weight times `scale` (sharper distributions), K = `steps`."""
    cfg = preset("tiny_qwen3", vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 head_dim=8, param_dtype="float32", compute_dtype="float32")
    variables = init_variables(cfg, jax.random.key(seed))
    variables = jax.tree_util.tree_map(lambda x: x * scale, variables)
    return LoadedModel(cfg, variables, tokenizer, TextFormat(), steps)
