"""`python -m synthseg` and the `synthseg` command: Ctrl-C at any point ends in one line, exit 130."""

import sys


def main() -> None:
    try:
        from .cli import app
    except KeyboardInterrupt:  # during start-up, before the command's own handler exists
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    app(prog_name="synthseg")


if __name__ == "__main__":
    main()
