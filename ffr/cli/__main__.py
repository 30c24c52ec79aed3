"""``python -m ffr.cli``: the ``ffr`` command."""

import sys

from ffr.cli import main

sys.exit(main())
