"""``python -m biaslens ...``: the ``biaslens`` command line, run in this process."""

import sys

from biaslens import main

sys.exit(main())
