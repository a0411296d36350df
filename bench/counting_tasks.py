"""Run `aipulse` (monitor.cli) with a thread that writes the number of live asyncio
tasks to a file once a second, for bench/soak.py. aipulse exposes no task count; a
bench should not add one to the product.

    python bench/counting_tasks.py TASKFILE run -c config.yaml ...
"""

from __future__ import annotations

import asyncio.tasks
import os
import sys
import threading
import time


def count_forever(path: str) -> None:
    while True:
        time.sleep(1)
        try:  # the task set is shared with the loop's thread: retry if it changed meanwhile
            live = sum(not t.done() for t in list(asyncio.tasks._all_tasks))
        except RuntimeError:
            continue
        try:  # a storage fault (RLIMIT_FSIZE 0) fails this write too: skip that sample
            with open(path + ".tmp", "w") as f:
                f.write(f"{live}\n")
            os.replace(path + ".tmp", path)
        except OSError:
            pass


if __name__ == "__main__":
    threading.Thread(target=count_forever, args=(sys.argv[1],), daemon=True).start()
    from monitor.cli import main
    sys.exit(main(sys.argv[2:]))
