"""Data-parallel bilevel optimization under ``torchrun``: averaging derivatives across ranks.

Each rank evaluates the losses on its own shard of every batch. A derivative of a loss (a gradient, a
Hessian-vector product, a mixed product, a finite-difference pass) is averaged across ranks exactly once, right where
it is computed, so every rank then holds the derivative of the loss on the whole batch and makes identical decisions
(CG step sizes, finite-difference radius, outer update). With equal shard sizes this reproduces the single-process
computation on the concatenated batch. Outside ``torch.distributed`` every function here is the identity.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist

from .params import Params


def is_distributed() -> bool:
    """True inside an initialized process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def mean_across_ranks(params: Params) -> Params:
    """Average every tensor of ``params`` over the ranks, in one collective per dtype.

    Tensors that carry autograd history are reduced with the differentiable collective, so unrolled steps can be
    backpropagated through the reduction.
    """
    if not is_distributed():
        return params
    size = dist.get_world_size()
    groups: Dict[torch.dtype, List[str]] = {}
    for name, value in params.items():
        groups.setdefault(value.dtype, []).append(name)
    out: Params = {}
    for names in groups.values():
        flat = torch.cat([params[name].reshape(-1) for name in names])
        if flat.requires_grad:
            from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

            flat = differentiable_all_reduce(flat) / size
        else:
            flat = flat.clone()
            dist.all_reduce(flat)
            flat /= size
        offset = 0
        for name in names:
            n = params[name].numel()
            out[name] = flat[offset:offset + n].view_as(params[name])
            offset += n
    return {name: out[name] for name in params}


def any_across_ranks(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce on ``device``); ``flag`` outside
    ``torch.distributed``. For decisions every rank must take together, as stopping a run."""
    if not is_distributed():
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shard(items, rank_index: int | None = None, size: int | None = None):
    """This rank's equal share of a sequence (a list of examples or a tensor's first dimension).

    Shards must have equal sizes for the distributed result to equal the single-process one, so a length that the
    number of ranks does not divide is an error.
    """
    rank_index = rank() if rank_index is None else rank_index
    size = world_size() if size is None else size
    length = len(items)
    if length % size:
        raise ValueError(f"shard: {length} items cannot be split equally over {size} ranks; use a batch size "
                         f"divisible by the number of ranks")
    per_rank = length // size
    return items[rank_index * per_rank:(rank_index + 1) * per_rank]

