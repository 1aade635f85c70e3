"""``python -m wholeimage``: the operator command line (see ``wholeimage.cli``)."""

import sys

from wholeimage.cli import main

sys.exit(main())
