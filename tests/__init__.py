"""The tests (see conftest.py)."""

import os

# Before anything imports torch (libgomp reads this as it loads), for this process and every
# stage it starts: OpenMP threads that wait sleep instead of spinning. The suites run a pytest
# worker per core (pytest-xdist), each starting stages with a thread per core, so threads
# outnumber cores; spinning ones then burn the cores the others need (a training test took 81 s
# instead of 37 s with two at once on 2 cores). Results are the same; only waiting changes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
