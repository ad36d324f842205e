"""WORKDIR/training_curves.png: the losses, accuracies and learning rate of metrics.jsonl,
written at the end of a run (TensorBoard's event files need TensorBoard to be seen)."""
from __future__ import annotations

import logging
import os
from typing import Optional

from laser_jax.train.metrics import read_metrics

log = logging.getLogger("laser_jax")
PLOT_FILE = "training_curves.png"
PANELS = (("loss", ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid")),
          ("accuracy (in-batch top-1; acc: LM next token)", ("acc_latent", "acc_explicit", "acc")),  # acc: issue 15
          ("learning rate", ("learning_rate",)))


def plot_metrics(workdir: str) -> Optional[str]:
    """Plot WORKDIR/metrics.jsonl into WORKDIR/training_curves.png; returns its path (None
    when there are no rows)."""
    rows = read_metrics(workdir)
    if not rows:
        return None
    # Deferred: matplotlib is only needed here, once at the end of a run, and costs ~1 s to import.
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(steps, [float("nan") if v is None else v for v in values], label=key,
                        marker="." if len(steps) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    axes[0].set_yscale("symlog", linthresh=1e-2)
    fig.suptitle(os.path.basename(os.path.normpath(workdir)))
    fig.tight_layout()
    path = os.path.join(workdir, PLOT_FILE)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
