"""`python -m swiftunet`: the command line (info, sample, bench); see swiftunet.cli."""

import sys

from swiftunet.cli import main

if __name__ == "__main__":
    sys.exit(main())
