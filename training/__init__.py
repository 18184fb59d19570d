"""Training: group-conditioned velocity networks, data, loss, trainer, checkpoints and `grouplat train`."""
