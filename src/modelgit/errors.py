"""The error hierarchy of modelgit.

Every error a user can cause or meet carries a message that says what failed, with the values
involved, and what to do about it. The CLI prints ``str(error)`` and exits with ``exit_code``;
a traceback is shown only when ``MODELGIT_DEBUG=1`` or ``--debug`` is given.
"""

from __future__ import annotations

__all__ = [
    "ModelgitError",
    "UsageError",
    "UnknownRevisionError",
    "FormatError",
    "UnsafeInputError",
    "UnsupportedFileError",
    "FileChangedError",
    "ManifestError",
    "DerivedFunctionError",
    "ManifestVersionError",
    "StoreError",
    "ObjectMissingError",
    "CorruptObjectError",
    "StoreFullError",
    "LockTimeoutError",
]


class ModelgitError(Exception):
    """Base class of every error modelgit raises on purpose."""

    exit_code = 1


class UsageError(ModelgitError):
    """The command or call was given arguments that cannot work."""

    exit_code = 2


class UnknownRevisionError(UsageError):
    """A revision (branch, tag, commit, ``REV~N``...) names no commit of the repository."""

    def __init__(self, message: str, rev: str | None = None):
        super().__init__(message)
        self.rev = rev


class FormatError(ModelgitError):
    """A checkpoint file is malformed, truncated or of an unsupported kind."""


class UnsafeInputError(FormatError):
    """A file would need code execution (e.g. a pickle with globals) to be read."""


class UnsupportedFileError(ModelgitError):
    """A path that is not a regular file or directory (a FIFO, socket or device), or a symlink
    that modelgit does not follow (out of the added directory, to a directory, dangling)."""


class FileChangedError(ModelgitError):
    """A file changed (rewritten, truncated, replaced, deleted) while it was being read."""


class ManifestError(ModelgitError):
    """A manifest cannot be parsed or does not describe a valid checkpoint."""


class ManifestVersionError(ManifestError):
    """A manifest was written by a newer modelgit than this one."""


class StoreError(ModelgitError):
    """Something went wrong in the tensor object store."""


class ObjectMissingError(StoreError):
    """An object named by a manifest is not in the store.

    ``oid`` is the missing object (a delta ancestor of the one asked for, possibly).
    """

    def __init__(self, message: str, oid: str | None = None):
        super().__init__(message)
        self.oid = oid


class CorruptObjectError(StoreError):
    """An object's bytes do not decode to content with its id.

    ``oid`` is the damaged object, ``reason`` what is wrong with it; ``quarantined`` says
    whether the store moved it aside (so that a fetch or an add can write a good copy in its
    place).
    """

    def __init__(self, message: str, oid: str | None = None, quarantined: bool = False,
                 reason: str = ""):
        super().__init__(message)
        self.oid = oid
        self.quarantined = quarantined
        self.reason = reason


class DerivedFunctionError(StoreError):
    """A derived object names a function this modelgit does not know (``fn``): upgrade."""

    def __init__(self, message: str, fn: str | None = None):
        super().__init__(message)
        self.fn = fn


class StoreFullError(StoreError):
    """The disk (or remote quota) ran out while writing; nothing half-written was kept."""


class LockTimeoutError(StoreError):
    """Another process held a store lock for too long."""
