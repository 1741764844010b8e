"""A checkpoint save that fails says why, names its directory, and leaves no partial one.

Megatron's torch_dist writer reports a full disk as "Worker failure: An error is caught while
starting worker 0, error: <class 'OSError'>" (the errno is logged once, far above) and leaves the
partial iter_* directory behind; the previous checkpoint and the tracker that names it are kept.
This wraps the training loop's save so that, on any failure, each rank probes the save
directory's filesystem for space, rank 0 removes the partial directory (never the one the tracker
names) and fails first, and the error says "No space left on device" when that is the cause.
Only synchronous saves are covered: an --async-save failure surfaces later, in Megatron's
finalisation.
"""

import errno
import functools
import os
import shutil
import time

_PROBE_BYTES = 1 << 20  # smaller than any shard a failed save could not write
_OTHER_RANKS_WAIT_SECONDS = 5


def _out_of_space(directory: str) -> bool:
    """Whether a 1 MiB file can no longer be written next to the checkpoints."""
    probe = os.path.join(directory, f".space_probe_{os.getpid()}")
    try:
        with open(probe, "wb") as stream:
            stream.write(bytes(_PROBE_BYTES))
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return False


def _remove_partial(save: str, iteration: int, partial: str) -> str:
    """What happened to `partial`: removed, or kept because the tracker names it."""
    tracker = os.path.join(save, "latest_checkpointed_iteration.txt")
    if os.path.isfile(tracker):
        with open(tracker, "rb") as stream:
            if stream.read().strip() == str(iteration).encode():
                return f"{partial} is kept: the tracker names it"
    shutil.rmtree(partial, ignore_errors=True)
    return f"the partial {partial} was removed"


@functools.cache
def apply_failed_save_report() -> None:
    import megatron.training.training as training
    import torch
    from megatron.training import get_args
    from torch.distributed.checkpoint.api import CheckpointException
    from megatron.training.checkpointing import get_checkpoint_name

    save_checkpoint = training.save_checkpoint

    @functools.wraps(save_checkpoint)
    def save_or_explain(iteration, *args, **kwargs):
        try:
            return save_checkpoint(iteration, *args, **kwargs)
        except (Exception, CheckpointException) as error:  # the latter is a BaseException
            save = get_args().save
            partial = get_checkpoint_name(save, iteration, return_base_dir=True)
            lines = [line for line in f"{type(error).__name__}: {error}".splitlines() if line]
            cause = "No space left on device" if _out_of_space(save) else lines[-1]
            if torch.distributed.get_rank() == 0:
                outcome = _remove_partial(save, iteration, partial)
            else:  # let rank 0 clean up and fail first: torchrun then stops the job
                time.sleep(_OTHER_RANKS_WAIT_SECONDS)  # and reports rank 0's error as its cause
                outcome = "rank 0 removes the partial directory"
            raise OSError(f"saving the checkpoint of iteration {iteration} to {partial} failed: "
                          f"{cause}; {outcome}; the previous checkpoint in {save} is kept "
                          "as it was") from error

    training.save_checkpoint = save_or_explain
