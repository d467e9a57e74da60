"""torchrun's ranks: they run with the same settings or all stop, and a rank whose peer died stops in one
line.

Each rank parses its own command line, so nothing else makes them equal: ranks given different --k train
different SAEs and save one without a word, a different --shard-tokens stores extra rows. Every rank's
resolved config is gathered on every rank and compared with rank 0's. When a rank stops (its own error,
a kill), the others learn it from their next collective as a Gloo or NCCL error: `stop_with_peers` turns
that into one line, the stopped rank having said why.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import torch.distributed as dist

import cli
from startup import DistInfo

# What a collective's error says when the rank at the other end is gone (Gloo's TCP pairs, and the
# store every backend's setup and barriers use); NCCL raises DistBackendError.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker crashing")


def settings_of(config: Any) -> dict[str, Any]:
    """flag -> value (as JSON holds it) for every field of the config dataclass, nested ones flat."""
    settings = {}
    for leaf in cli.leaves(type(config)):
        value = config
        for name in leaf.path:
            value = getattr(value, name)
        settings[leaf.flag] = json.loads(json.dumps(value, default=str))
    return settings


def _shown(value: Any) -> str:
    return value if isinstance(value, str) and value else json.dumps(value)


def check_same_settings(config: Any, info: DistInfo) -> None:
    """A one-line UsageError, on every rank, naming the first setting in which a rank differs from rank 0
    (nothing on a single process)."""
    if not info.distributed:
        return
    everyone: list[dict | None] = [None] * info.world_size
    dist.all_gather_object(everyone, settings_of(config))
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], start=1):
        for flag, value in first.items():
            if theirs.get(flag) != value:
                raise cli.UsageError(f"torchrun ranks disagree on {flag}: rank 0 has {_shown(value)}, rank {rank} "
                                     f"has {_shown(theirs.get(flag))}; give every rank the same flags and --config")


def peer_stopped(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from) is a collective failing because another rank is gone."""
    while err is not None:
        if isinstance(err, (dist.DistBackendError, dist.DistNetworkError)):
            return True
        if isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextmanager
def stop_with_peers(then: str) -> Iterator[None]:
    """Around a rank's work: a collective that fails because another rank stopped becomes one line, which
    ends with `then` (what was kept and how to go on)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - anything else is raised again as it was
        if not peer_stopped(err):
            raise
        raise cli.UsageError(f"another torchrun rank stopped (its own error is above), so this rank stopped "
                             f"too; {then}") from None
