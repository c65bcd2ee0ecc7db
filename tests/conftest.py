"""The test run is an entry point: it chooses the process settings a `repsr` command would."""

from repsr.runtime import use_passive_omp_wait

use_passive_omp_wait()  # before any test module imports torch; see repsr.runtime
