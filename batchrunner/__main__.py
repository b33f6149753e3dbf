"""``python -m batchrunner`` and the installed ``batchrunner`` command: the CLI's ``main``,
loaded here so that Ctrl-C while its modules load (about 0.3 s) says one line, not a
traceback, and told how the program was started, for the commands it prints."""

import sys


def main() -> int:
    try:
        from batchrunner.cli import main as cli_main
        from batchrunner.progress import started_as
    except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, as main says (exit 4)
        sys.stderr.write("batchrunner: interrupted while starting: nothing was done — run the "
                         "same command again\n")
        return 4
    # The commands it prints name it as it can be run (progress.program): run as this module
    # (python -m batchrunner), or loaded by the console script, whose path is sys.argv[0].
    started_as(sys.argv[0], module=__name__ == "__main__")
    return cli_main(exiting=True)


if __name__ == "__main__":
    raise SystemExit(main())
