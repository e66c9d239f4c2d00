"""Packaged default configuration (YAML data, read through importlib.resources)."""
