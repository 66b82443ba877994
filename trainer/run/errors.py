"""The run layer's errors: messages meant for the user, printed by the CLI without a traceback."""
from __future__ import annotations


# Exit status of a worker that stopped on the user's error (data the config refutes, a changed
# feature store, a config that cannot train): a restart would meet the same error, so the daemon
# marks the run failed at once instead of spending its restarts on it.
USER_ERROR_EXIT = 78  # sysexits.h EX_CONFIG


class RunError(Exception):
    """Base of the run layer's errors: a message meant for the user, no traceback needed."""


class RunNotFound(RunError, LookupError):
    """No run directory matches the given name or path."""


class RunExists(RunError, FileExistsError):
    """`create_run_dir` was asked for a name that is already taken."""


class InvalidRunName(RunError, ValueError):
    """A run name that cannot be used as a directory name under the runs root."""


class RuntimeDirError(RunError):
    """The runtime directory for sockets is missing, foreign or not private."""


class StateFileError(RunError, ValueError):
    """state.json exists but cannot be read as a JSON object."""
