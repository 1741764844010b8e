"""The directory a conversion writes: never merged into an existing one.

import-hf into a training run's directory would repoint its latest_checkpointed_iteration.txt
to the import, and export-hf into an earlier export would overwrite config.json and leave shards
that the new index does not name. So a non-empty target is refused unless --overwrite is given,
and then it is replaced whole: the new content is written into a hidden sibling that takes the
target's place only once the conversion has succeeded, so a failure leaves the old directory as
it was. A missing target is created the same way (it appears only when complete); an empty one
is written in place, since it may be a mount point that cannot be renamed.
"""

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence, Tuple

import torch


def _listing(directory: Path) -> str:
    names = sorted(p.name for p in directory.iterdir())
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def _check(path: str, target: Path, flag: str, overwrite: bool, consequence: str,
           inputs: Sequence[Tuple[str, str]]) -> None:
    if not target.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a directory")
    if not overwrite:
        raise ValueError(f"{flag} {path}: not empty ({_listing(target)}); {consequence}. Give "
                         "--overwrite to replace the whole directory once the conversion has "
                         "succeeded, or a new or empty directory")
    for input_flag, input_path in inputs:
        source = Path(os.path.realpath(input_path))
        if source == target or target in source.parents:
            raise ValueError(f"{flag} {path}: --overwrite would delete {input_flag} "
                             f"{input_path}, which lies inside it")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: --overwrite writes the new directory beside it, and "
                         f"{target.parent} is not writable")


def _first_rank() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


@contextlib.contextmanager
def output_directory(path: str, flag: str, overwrite: bool, consequence: str,
                     inputs: Sequence[Tuple[str, str]] = ()) -> Iterator[Path]:
    """Yields the directory to write `path`'s new content into (not created here); checked on
    entry, before any work: a non-empty `path` without `overwrite` is refused, naming `flag`
    and `consequence` (what merging into it would do), and so is one holding any of `inputs`
    ((flag, path) pairs) with it. Under torch.distributed every rank writes into the yielded
    directory and rank 0 swaps it in on exit: the caller has the ranks wait for each other at
    the end of the block (all written) and after it (swapped in)."""
    # the real path: a symlinked target stays a link to the replaced directory, and the sibling
    # is on the target's file system, where rename is atomic
    target = Path(os.path.realpath(path))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        _check(path, target, flag, overwrite, consequence, inputs)
    elif target.is_dir():
        yield target
        return
    written = target.parent / f".{target.name}.partial"
    # left by a killed run; every rank removes it, and none writes before all have joined the
    # process group, so after all have removed it
    shutil.rmtree(written, ignore_errors=True)
    try:
        yield written
    except BaseException:
        if _first_rank():
            shutil.rmtree(written, ignore_errors=True)
        raise
    if not _first_rank():
        return
    if not target.exists():
        os.rename(written, target)
        return
    replaced = target.parent / f".{target.name}.replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    os.rename(target, replaced)
    os.rename(written, target)
    shutil.rmtree(replaced)
