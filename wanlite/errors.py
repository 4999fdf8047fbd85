"""One exception family. Every message names the thing, what was expected, what was found, and the fix."""

from __future__ import annotations


class WanliteError(Exception):
    """Base of every error wanlite raises on purpose (the CLI prints the message alone)."""


class FormatError(WanliteError):
    """A file or directory is not a readable Wan transformer in any layout we know."""


class SpecError(WanliteError):
    """A Wan configuration is invalid, or would be mis-loaded by a Wan tool."""


class RecipeError(WanliteError):
    """A student recipe cannot be built from this teacher."""


class DestinationExistsError(WanliteError):
    """A write would replace something that already exists."""
