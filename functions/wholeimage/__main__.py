"""``python -m wholeimage``: the operator command line (see ``wholeimage.cli.main``)."""

import sys

from wholeimage.cli.main import main

sys.exit(main())
