"""Experiments on the embedded synthetic task.

  python -m laser_jax.experiments.ablate [--seeds=0,1,2] [--out=experiments/] [--steps=N]

`ablate` trains the paper's ablations (Table 5) at one budget over several seeds through
the project's trainer and writes a table, a JSON summary and a plot; `explicit_upper`
scores a trained model's explicit view fed the gold reasoning (an upper bound for what
the latent view can distil); `rewrite` scores it fed reasoning a language model wrote
(rewrite-then-retrieve, the baseline LaSER replaces); `latency` times retrieval per query
(basic, LaSER, rewrite-then-retrieve); `thoughts` shows the top tokens behind each soft step
of the latent view.
"""
