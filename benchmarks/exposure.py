"""Split a rank's waiting on communication into waiting for a late rank and waiting for the wire.

A transfer cannot complete before every rank of its group has posted it. For a wait on rank r
over [start, end], on transfers whose last post (over all ranks) was at `ready`:

    late_peer = min(max(ready - start, 0), end - start)   another rank had not posted yet:
                                                          load imbalance, not the link
    wire      = (end - start) - late_peer                 every rank had posted: the transfer
                                                          itself (and any queued ahead of it)

Each rank's timeline (megatron_tsp.comm.Timeline) keys a post by its kind and its index among
that kind's posts, which is the same transfer on every rank. Times are perf_counter seconds,
one clock for every process of one machine (the benchmarks' ranks all run on one). A ring
transfer needs only its neighbour's post; taking the whole group's last post is exact at D = 2
and an upper bound on the late share above.
"""

from collections import defaultdict
from typing import Dict, List, Sequence

from megatron_tsp.comm import Timeline

Split = Dict[str, Dict[str, float]]  # kind -> {"late_peer": s, "wire": s}


def split_waits(timelines: Sequence[Timeline]) -> List[Split]:
    """By rank: the seconds each kind's waits spent on a late rank and on the wire."""
    keys = set(timelines[0].posts)
    for rank, timeline in enumerate(timelines):
        if set(timeline.posts) != keys:
            raise ValueError(f"rank {rank} posted other transfers than rank 0: the ranks did "
                             "not run the same step")
    ready = {key: max(t.posts[key] for t in timelines) for key in keys}
    splits = []
    for timeline in timelines:
        split: Split = defaultdict(lambda: {"late_peer": 0.0, "wire": 0.0})
        for kind, waited_on, start, end in timeline.waits:
            last_post = max((ready[key] for key in waited_on), default=start)
            late = min(max(last_post - start, 0.0), end - start)
            split[kind]["late_peer"] += late
            split[kind]["wire"] += end - start - late
        splits.append(dict(split))
    return splits


def wire_seconds(split: Split) -> float:
    return sum(v["wire"] for v in split.values())

