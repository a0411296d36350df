"""`python -m monitor ...`: the `aipulse` command (signals held while starting, as monitor.early says)."""

import sys

from monitor.early import main

sys.exit(main())
