"""``python -m multipass.bench`` (``make bench``)."""

import sys

from multipass.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
