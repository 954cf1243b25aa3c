"""``python -m cluster`` is the ``kraft`` command."""

import sys

from cluster.cli import main

sys.exit(main())
