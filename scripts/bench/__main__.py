"""``python -m multipass_bench`` (``make bench``)."""

import sys

from multipass_bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
