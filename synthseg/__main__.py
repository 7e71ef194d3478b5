"""`python -m synthseg` and the `synthseg` command: Ctrl-C at any point ends in one line, exit 130; a usage
error (a missing argument, an unknown option, a value of the wrong type) in one line, exit 2."""

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
    import typer

    from .cli import app

    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")  # typer's click, vendored or not
    try:
        code = app(prog_name="synthseg", standalone_mode=False)
    except usage_error as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare `synthseg` or `synthseg COMMAND`: its help
            help_text = error.ctx.get_help()  # typer's rich help prints itself and returns ""
            if help_text:
                print(help_text)
        else:  # a missing argument, an unknown option, a value of the wrong type: one line, as for any bad input
            command = error.ctx.command_path if error.ctx else "synthseg"
            sys.stderr.write(f"error: {error.format_message()} (see {command} --help)\n")
        code = error.exit_code
    except typer.Abort:
        _interrupted(signal.SIGINT, None)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
