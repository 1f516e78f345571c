"""Command-line interface (typer).

Before torch loads: OpenMP threads that spin while waiting collapse throughput when another
process shares the cores (measured on 2 cores beside another torch job: 2661 ms per forward of
the demo U-Net with spinning threads, 470 ms with passive ones). A user's own setting wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
