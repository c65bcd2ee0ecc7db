"""`python -m repsr` (and `torchrun -m repsr`) run the CLI."""

import sys

from repsr.cli import main

sys.exit(main())
