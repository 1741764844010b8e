"""The first logged iteration of a run closes its --log-interval window like any other.

What is printed (and sent to TensorBoard) changes on every machine; training does not.
"""

import functools


@functools.cache
def apply_log_interval_fix() -> None:
    # megatron/training/training.py training_log: the first iteration of a run (is_first_iteration)
    # is printed but its loss accumulators are not reset, so that the first --log-interval
    # window still covers all its iterations. When that first iteration closes a window itself
    # (always with --log-interval 1), the next window then averages two iterations: the line
    # logged for iteration start+2 shows the mean of start+1 and start+2, and a resumed run logs
    # other values than an uninterrupted one. Treat such an iteration as the normal end of a
    # window. Not CPU-specific; only what is printed (and sent to TensorBoard) changes.
    import megatron.training.training as training

    log = training.training_log

    @functools.wraps(log)
    def training_log(*args, **kwargs):
        iteration = kwargs["iteration"] if "iteration" in kwargs else args[3]
        if kwargs.get("is_first_iteration") and iteration % training.get_args().log_interval == 0:
            kwargs["is_first_iteration"] = False
        return log(*args, **kwargs)

    training.training_log = training_log
