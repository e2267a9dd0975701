"""Exceptions raised by stagelearn. The CLI (:mod:`.cli`) maps them to exit codes, in one place."""


class StagelearnError(Exception):
    """Base class of stagelearn's own errors."""


class ConfigError(StagelearnError, ValueError):
    """A run YAML or ADIOS2 XML is invalid. The message names the file, the key and the fix."""


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
        import signal

        self.signum = int(signum)
        super().__init__(message or f"interrupted by {signal.Signals(self.signum).name}")
