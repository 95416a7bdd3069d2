"""``python -m daemon.cli``: the ``alignd`` command (tests and benchmarks start the daemon this way)."""

import sys

from daemon.cli import main

sys.exit(main())
