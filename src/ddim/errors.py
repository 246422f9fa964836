"""The errors a user can cause, and only those: each message is one line naming the file, flag or
value at fault and what to do. The CLI prints it and exits with the error's `exit_status` (2; 130
or 143 for a run stopped by SIGINT or SIGTERM); any other exception is a bug in ddim and keeps its
traceback. Each class also derives from the built-in exception a Python caller would expect
(ValueError, FileNotFoundError, OSError, ...), so `except ValueError` keeps working."""

from __future__ import annotations

import errno


class DdimError(Exception):
    """A problem the user can fix; str(error) is one line with the fix."""

    exit_status = 2


class BadValue(DdimError, ValueError):
    """An argument, flag or config value of the wrong type or out of range."""


class BadFile(DdimError, ValueError):
    """A file or folder that is damaged, of the wrong kind, or does not fit the model."""


class MissingFile(DdimError, FileNotFoundError):
    """A file or folder that does not exist."""


class RunBusy(DdimError):
    """Another process is writing the same run folder."""


class NonFinite(DdimError, FloatingPointError):
    """NaN or infinity where a finite number is needed (a flag, a loss, a model's output)."""


class PathError(DdimError, OSError):
    """The operating system refused a path: disk full, permission denied, a read-only folder, a
    path under a file, a folder where a file goes."""


class Stopped(DdimError):
    """A run stopped by a signal after saving its last completed step; exit status 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum


# errno -> what to do. These come from the user's disk and paths, never from a bug in ddim's logic.
_FIXES = {
    errno.ENOSPC: "free disk space or choose another folder",
    errno.EDQUOT: "free space within your quota or choose another folder",
    errno.EFBIG: "the file size limit (ulimit -f) was reached; raise it or free space",
    errno.EACCES: "fix its permissions or choose another folder",
    errno.EPERM: "fix its permissions or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "a folder is where a file should go; move it or choose another path",
    errno.EEXIST: "a file is where a folder should go; move it or choose another path",
    errno.ENAMETOOLONG: "shorten the path",
    errno.ELOOP: "the path has a symbolic-link loop; fix the link",
}


def from_os_error(error: OSError, path: object = None) -> PathError | None:
    """The one-line PathError for an OSError that the user's disk or paths caused, naming `path`
    (default: the error's own file name), or None for any other OSError, which stays a bug."""
    fix = _FIXES.get(error.errno)
    if fix is None:
        return None
    where = path if path is not None else error.filename
    what = error.strerror or errno.errorcode.get(error.errno, "error")
    return PathError(f"cannot use {where}: {what}; {fix}" if where is not None else f"{what}; {fix}")
