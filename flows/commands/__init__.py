"""One module per top-level CLI command; each defines ``register(subparsers)``.

A command module imports heavy libraries (prefect, torch, spacy, ...) inside its handler only.
"""
