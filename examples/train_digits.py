"""Trains the digits model that swiftunet ships (swiftunet.pretrained("digits")).

    python3 examples/train_digits.py --out digits.safetensors     # same as: python3 -m swiftunet train-digits
    python3 examples/train_digits.py --help

The program is swiftunet.train_digits (installed with the package); this file
runs it with the same arguments. Needs scikit-learn (the data set) and, for
--loss-png, matplotlib. docs/digits.md has the shipped run's command, time
and loss curve.
"""

import sys

from swiftunet.train_digits import main

if __name__ == "__main__":
    sys.exit(main())
