"""latest_checkpointed_iteration.txt is replaced atomically, never rewritten in place.

megatron/training/checkpointing.py save_checkpoint (iter_finalize_fn) updates the tracker with
`maybe_msc.open(tracker, 'w')`: the file is truncated, then written. A job killed between the
two (or a node lost before the page cache reaches disk) leaves an empty tracker, and the next
--load stops with "Invalid metadata file" although every checkpoint is intact. Here the new
tracker is written to a temporary file, synced, and renamed over the old one (POSIX rename is
atomic), so the tracker names the previous iteration or the new one, nothing in between.
Applied everywhere: it is not CPU-specific. Multi-storage-client (object store) paths keep
megatron-core's own handling.
"""

import contextlib
import functools
import os

from megatron_tsp.checkpoint import TRACKER_NAME


@contextlib.contextmanager
def replace_on_close(path: str, mode: str = "w"):
    """A file opened for writing whose content takes `path`'s place only once it is whole."""
    temporary = f"{path}.tmp.{os.getpid()}"
    try:
        with open(temporary, mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@functools.cache
def apply_atomic_tracker() -> None:
    import megatron.training.checkpointing as checkpointing
    from megatron.core.msc_utils import MaybeMultiStorageClient, MultiStorageClientFeature

    class AtomicTrackerStorage(MaybeMultiStorageClient):
        def open(self, path, mode="r", *args, **kwargs):
            if (not MultiStorageClientFeature.is_enabled() and "w" in mode
                    and os.path.basename(str(path)) == TRACKER_NAME):
                return replace_on_close(str(path), mode)
            return super().__getattr__("open")(path, mode, *args, **kwargs)

    checkpointing.maybe_msc = AtomicTrackerStorage()
