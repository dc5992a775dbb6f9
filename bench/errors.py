"""Errors that metabench reports to the user as one line naming the fix."""


class MetabenchError(Exception):
    """Base class of every error metabench reports as a one-line message.

    The command-line interface catches it, prints ``metabench: error: <message>`` and exits
    with status 2. Messages are a single line that says what is wrong and how to fix it.
    """


class DataError(MetabenchError):
    """Data is missing, corrupt, or cannot be downloaded (raised by ``metabench.datasets``)."""


class ConfigError(MetabenchError):
    """A run's configuration is invalid: unknown name, impossible episode shape, bad path."""


class ReportError(MetabenchError):
    """``metabench report`` cannot use its inputs: a folder that is not a run or timing directory,
    malformed files, runs of one setting tested on different episodes, an existing output folder."""
