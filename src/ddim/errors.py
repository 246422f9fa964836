"""The errors a user can cause, and only those: each message is one line naming the file, flag or
value at fault and what to do. The CLI prints it and exits with status 2; any other exception is
a bug in ddim and keeps its traceback. Each class also derives from the built-in exception a
Python caller would expect (ValueError, FileNotFoundError, ...), so `except ValueError` keeps
working."""


class DdimError(Exception):
    """A problem the user can fix; str(error) is one line with the fix."""


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
