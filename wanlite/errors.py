"""One exception family. Every message names the thing, what was expected, what was found, and the fix."""

from __future__ import annotations

import errno


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


class WriteError(WanliteError):
    """A destination could not be written (permissions, a full disk, a read-only file system); nothing was
    replaced."""


def os_fix(err: OSError) -> str:
    """What to do about an OS error on a path."""
    if err.errno == errno.ELOOP:
        return "the path is a symlink loop: point the link at the real file."
    if err.errno in (errno.EACCES, errno.EPERM):
        return "give this user permission (chmod), or use a path it may read and write."
    if err.errno == errno.ENOENT:
        return "check the path."
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or write elsewhere) and run it again."
    if err.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return "a file stands where a directory is needed, or the reverse: choose another path."
    return "check the path, its permissions and the disk."


def describe(err: Exception) -> str:
    """The one message the CLI prints: wanlite's own as is; an OS error with the file it concerns and the fix."""
    if isinstance(err, WanliteError) or not isinstance(err, OSError):
        return str(err)
    return f"{err.filename or 'a file'}: {err.strerror or err}. Fix: {os_fix(err)}"
