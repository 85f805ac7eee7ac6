import sys

try:
    # Importing torch takes seconds, so Ctrl-C often lands here, before the CLI handles it.
    from core import distributed
    from core.cli import main
except KeyboardInterrupt:
    sys.stderr.write("Interrupted while starting; nothing was done.\n")
    raise SystemExit(130) from None

distributed.exit_process(main())
