"""`python -m synthseg` and the `synthseg` command: Ctrl-C at any point ends in one line, exit 130."""

import os
import signal
import sys


def _interrupted(signum, frame) -> None:
    """Ctrl-C during start-up, before a command installs its own handler: one line, exit 130."""
    sys.stderr.write("error: interrupted\n")
    sys.stderr.flush()
    os._exit(130)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    from .cli import app

    app(prog_name="synthseg")


if __name__ == "__main__":
    main()
