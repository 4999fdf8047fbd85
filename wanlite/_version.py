"""The package version (a leaf module, so that every layer may record it)."""

__version__ = "0.2.0"
