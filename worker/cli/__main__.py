"""``python -m worker.cli``: the same as ``exportctl``."""

import sys

from . import main

sys.exit(main())
