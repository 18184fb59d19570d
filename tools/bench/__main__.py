"""`python -m grouplat.tools.bench ...`, the same as `grouplat bench ...`."""

import sys

from grouplat.tools.bench.cli import main

sys.exit(main())
