"""`python -m pccore ...`: the same command line as `pccore`, and the module torchrun starts
(`torchrun --nproc-per-node N -m pccore run RECIPE`)."""

import sys

from pccore.cli import main

if __name__ == "__main__":
    sys.exit(main())
