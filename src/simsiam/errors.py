"""Errors a user can fix. Each message is one line: what is wrong and what to do about it.

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""


class SimSiamError(Exception):
    pass


class ConfigError(SimSiamError, ValueError):
    """A bad option or value."""


class DataError(SimSiamError):
    """Missing, empty or unreadable data."""


class UnsafeFile(DataError):
    """A file holding objects other than tensors and plain values: refused, never unpickled."""


class TrainingError(SimSiamError):
    """Training cannot go on (non-finite loss, checkpoint that does not match, ...)."""


class NonFinite(TrainingError):
    """The loss or the model went NaN or infinite (a run with --on-collapse recover steps back)."""


class ClaimsNotHeld(SimSiamError):
    """`simsiam reproduce --check`: a claim of the paper did not hold by its margin."""


class Interrupted(SimSiamError):
    """SIGINT or SIGTERM stopped training after writing a checkpoint (exit 130 / 143)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130


def warn(msg: str) -> None:
    """A one-line warning on stderr (not `warnings.warn`: its file:line prefix is noise to a user);
    under torchrun from rank 0 only."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(f"simsiam: warning: {msg}", file=sys.stderr, flush=True)
