"""The one exception type users see."""


class SynthsegError(Exception):
    """Bad input or a missing/corrupt file: a one-line message, shown by the CLI without a traceback."""
