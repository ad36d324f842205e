"""Metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard.

On resume from step k, rows after k (logged before a crash, then redone) are dropped first,
so the file reads like one uninterrupted run; TensorBoard likewise (a new event file whose
purge step makes TensorBoard drop the older files' events after k).
"""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("laser_jax")
METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list:
    """The rows of WORKDIR/metrics.jsonl; a line that is not a JSON object (cut short by a
    crash or damaged) is left out with a warning naming the file and line."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                log.warning("%s: line %d is not a metrics row (cut short or damaged: %d bytes); left out, the rows "
                            "it held are lost", path, number, len(line))
    return rows


def keep_intact_rows(workdir: str) -> list:
    """Rewrite WORKDIR/metrics.jsonl without its damaged lines (issue 27); returns the steps of
    the rows kept."""
    path = os.path.join(workdir, METRICS_FILE)
    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
    return [r.get("step") for r in rows]


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

            # Resumed: TensorBoard drops the earlier files' events from the restored step on, as
            # metrics.jsonl drops its rows (each step once).
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
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
