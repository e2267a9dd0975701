"""Exceptions raised by stagelearn, and the exit codes they become.

The CLI (:mod:`.cli`, ``EXIT_CODES``) maps exceptions to exit codes, in one place; ``stagelearn
run`` (:mod:`.launcher`) returns the failing side's code, or its own judgement of a run that ended
badly. The codes (also in ``stagelearn --help``, :mod:`.cli_help`):

====  ====================================================================================
0     success
1     any other error (a traceback is logged)
2     invalid configuration, command line or input file (ConfigError, UsageError)
3     a peer never came or stopped answering (StreamTimeoutError; ``run``: staging could not
      read the stream within ``timeouts.step_s``, or the code closed its stream before staging
      opened it)
4     a peer went away mid-run (PeerLostError)
5     a model update was malformed (ModelFormatError)
6     ADIOS2 missing or lacking MPI (AdiosUnavailableError: stagelearn's own ADIOS2 import)
7     the simulation failed (``run``: the unchanged code of ``simulation.type: external`` ended
      with a non-zero status, e.g. 134/6 when a C++ code aborts on an ADIOS2 exception such as
      ``MissingOperatorFailure``; its own status and last log lines are printed)
130   interrupted (SIGINT); 143 terminated (SIGTERM)
====  ====================================================================================
"""

import re
import signal

#: ``stagelearn run``: the code (``simulation.type: external``) failed; distinct from 6 (ADIOS2 missing).
EXIT_SIMULATION_FAILED = 7

#: A side that never came or stopped answering (:class:`StreamTimeoutError`).
EXIT_TIMEOUT = 3


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


class ContactFileInUse(UsageError):
    """A live process of another job holds the contact file or run directory this one needs (exit 2)."""


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
