"""`python -m grouplat.client.batch encode|decode|mix …`: the batch commands without the `grouplat` CLI."""

import sys

from grouplat.client.batch.cli import main

sys.exit(main())
