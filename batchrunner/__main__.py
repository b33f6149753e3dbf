import sys

try:
    from batchrunner.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: one line, as main says (exit 4)
    sys.stderr.write("batchrunner: interrupted while starting: nothing was done — run the same "
                     "command again\n")
    raise SystemExit(4) from None

raise SystemExit(main())
