"""Exceptions raised by stagelearn. The CLI (:mod:`.cli`) maps them to exit codes, in one place."""

import re
import signal


class StagelearnError(Exception):
    """Base class of stagelearn's own errors."""


class ConfigError(StagelearnError, ValueError):
    """A run YAML or ADIOS2 XML is invalid. The message names the file, the key and the fix.

    Several problems found at once (see :meth:`from_problems`) are all in the one-line message and,
    one per item, in ``problems``.

    Attributes
    ----------
    problems : tuple of str
        Each problem on its own (file, key, value and fix); ``(message,)`` for a single one.
    """

    def __init__(self, message, problems=None):
        super().__init__(message)
        self.problems = tuple(problems) if problems else (str(message),)

    @classmethod
    def from_problems(cls, problems, source):
        """One error holding every problem in ``problems`` (non-empty list of one-line str) of file ``source``."""
        problems = list(problems)
        if len(problems) == 1:
            return cls(problems[0])
        listed = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        return cls(f"{source}: {len(problems)} errors: {listed}", problems)


class UsageError(StagelearnError, ValueError):
    """A command asked for something that is not there (a step or variable missing from a file)."""


class StreamTimeoutError(StagelearnError, TimeoutError):
    """A blocking wait on a stream (open, step, model) passed its configured timeout."""


class PeerLostError(StagelearnError):
    """The other side of a stream went away before the end of the run."""


class ModelFormatError(StagelearnError, ValueError):
    """A model update on the reverse stream has unexpected names, shapes or dtypes."""


class AdiosUnavailableError(StagelearnError, ImportError):
    """ADIOS2 is missing, or lacks a feature (MPI) that the configured layout needs."""


class Interrupted(StagelearnError):
    """SIGINT or SIGTERM arrived; the side stopped at a step boundary and closed its files.

    Attributes
    ----------
    signum : int
        The signal; the exit code is ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum, message=None):
        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal.Signals(self.signum).name}")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text):
    """``text`` without terminal colour/escape sequences (ADIOS2 colours its error messages)."""
    return _ANSI.sub("", str(text))
