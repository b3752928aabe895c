"""``python -m biaslens ...``: the ``biaslens`` command line, run in this process."""

import signal
import sys

from biaslens import main

# Ctrl-C ends the process as it ends the `biaslens` binary: the command writes its outputs
# atomically and its runs resume, so nothing is lost. (Python's own handler would only be
# looked at after the command returned.)
signal.signal(signal.SIGINT, signal.SIG_DFL)
sys.exit(main())
