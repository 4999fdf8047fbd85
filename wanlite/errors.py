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


class ConfigError(WanliteError):
    """A run config has an unknown key, a value of the wrong type, or values that cannot work together."""


class NonFiniteLossError(WanliteError):
    """The loss became NaN or infinite; the run stopped before the bad update and kept its last good checkpoint."""

    def __init__(self, message: str, step: int, components: list[str], checkpoint=None):
        super().__init__(message)
        self.step, self.components, self.checkpoint = step, components, checkpoint
