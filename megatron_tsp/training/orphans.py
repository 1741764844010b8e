"""A rank's spawn-mode helper processes exit when the rank does.

Megatron's checkpoint writer starts a multiprocessing Manager (a spawn-mode server process) the
first time a rank saves. torchrun stops a failed job by signalling each surviving worker's
process group, so a rank that was itself killed (by a scheduler's SIGTERM, or the OOM killer's
SIGKILL) leaves its Manager running, and with it Python's resource tracker, which waits for
every holder of its pipe: both outlive the job. A SIGTERM handler in the rank could not help
with SIGKILL, nor run while the rank is blocked in a collective; so the helper watches its
parent instead.
"""

import os
import threading
import time

_POLL_SECONDS = 0.5


def exit_with_parent() -> None:
    """In a helper process: exit as soon as the process that started it is gone (re-parented)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(_POLL_SECONDS)
        os._exit(1)  # no cleanup: the state it served died with the rank

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
