"""cattune.training."""
