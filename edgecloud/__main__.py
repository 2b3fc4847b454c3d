"""``python -m edgecloud`` is the ``edgecloud`` command."""

import sys

from edgecloud.cli import main

sys.exit(main())
