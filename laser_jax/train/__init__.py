"""Training: config, set-up, the jitted step, the loop, checkpoints, faults, plans."""
