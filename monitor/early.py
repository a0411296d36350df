"""The `aipulse` command's first moments: signals that arrive before the daemon's event
loop handles them are held, not fatal.

Importing the daemon's modules and reading a large config take a second or more. A
SIGHUP then (a config deployed and reloaded at once, `systemctl reload` racing a
restart, logrotate) used to end the process with exit 129, which `Restart=on-failure`
does not restart. `main` installs handlers that only remember what arrived, before
anything else is imported; `aipulse run` then reloads once it is up (for SIGHUP) or
stops as soon as it has started (SIGTERM, SIGINT). Any other command takes the
default actions back and, if one of these signals came meanwhile, receives it again,
so it behaves as it always did.

Standard library only: this runs before the rest of aipulse is imported.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

HELD = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_arrived: list[int] = []  # signals held so far, in order of arrival
_holding = False


def _remember(signum: int, frame: FrameType | None) -> None:
    _arrived.append(signum)


def hold() -> None:
    """Remember SIGHUP, SIGTERM and SIGINT instead of acting on them (main thread only)."""
    global _holding
    for sig in HELD:
        signal.signal(sig, _remember)
    _holding = True


def holding() -> bool:
    return _holding


def take() -> list[int]:
    """The signals held so far (each once), in order of arrival; forgets them."""
    out = list(dict.fromkeys(_arrived))
    _arrived.clear()
    return out


def release() -> None:
    """Give the default actions back, then act on what was held (the process may end here)."""
    global _holding
    if not _holding:
        return
    _holding = False
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in take():
        os.kill(os.getpid(), sig)


def main() -> int:
    """The `aipulse` console script: hold signals, then run the command line."""
    hold()
    from monitor.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
