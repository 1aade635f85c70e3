"""``python -m ims_emulator``: serve the emulator until SIGINT or SIGTERM."""

import sys

from ims_emulator.server import main

sys.exit(main())
