"""cattune.pipeline."""
