"""`python -m repsr.kernels`: build the fused kernel for this CPU now (`make install` runs it)."""

import sys

from repsr.kernels.build import main

sys.exit(main())
