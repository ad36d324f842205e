"""Metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard.

On resume from step k, rows after k (logged before a crash, then redone) are dropped first,
so the file reads like one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("laser_jax")
METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb = None
        if not enabled:
            return
        rows = [r for r in read_metrics(workdir) if r.get("step", 0) <= start_step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(self.path + ".tmp", self.path)
        try:  # optional (and heavy): imported only by a process that writes metrics
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # optional
            log.info("tensorboardX not installed: metrics go to %s only", self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace("loss_", "loss/").replace("acc_", "accuracy/"), value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
