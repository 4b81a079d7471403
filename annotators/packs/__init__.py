"""Prior packs shipped with cattune (YAML)."""
