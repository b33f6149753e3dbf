"""``python -m batchrunner`` and the installed ``batchrunner`` command: the CLI's ``main``,
loaded here so that Ctrl-C while its modules load (about 0.3 s) says one line, not a
traceback."""

import sys


def main() -> int:
    try:
        from batchrunner.cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, as main says (exit 4)
        sys.stderr.write("batchrunner: interrupted while starting: nothing was done — run the "
                         "same command again\n")
        return 4
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
