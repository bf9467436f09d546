"""The engine's version (written into model cards)."""

__version__ = "0.1.0"
