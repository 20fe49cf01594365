"""``python -m multipass.model_sync --bucket B --prefix P --dest D``: what the init containers run."""

import sys

from multipass.model_sync.command import main

sys.exit(main())
