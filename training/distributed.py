"""Collectives for data-parallel training, no-ops on a single process.

Joining the process group (from torchrun's RANK, WORLD_SIZE, LOCAL_RANK) and choosing the device live
in `startup` (`init_distributed`, `DistInfo`); these helpers act on whatever group it joined.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average a float tensor over ranks (in place); returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_any(mask: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool tensor over ranks (a new tensor; Gloo cannot reduce bools)."""
    if not _active():
        return mask
    as_int = mask.to(torch.int32)
    dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
    return as_int.bool()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank `src` to every rank (identity on one process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if _active():
        dist.barrier()
