"""cattune.annotators."""
