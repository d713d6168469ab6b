"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``train.parallel=fsdp``: sharding and sharded state.

What is sharded, and how. :func:`shard_model` applies ``fully_shard`` to every child of every ``nn.ModuleList``
named ``blocks`` (the backbone's transformer blocks, ViT or MViT, each decoder head's blocks, a momentum target's EMA
copy of the backbone), innermost first, then to the root, which takes every remaining parameter (patch embedding,
tokens, norms, linear heads). A block is the unit that is all-gathered before its forward and freed after it
(ZeRO-3), so peak memory holds one block's full parameters besides the shards. Frozen teachers
(:class:`~vmim.models.frozen.Frozen`) are not submodules: FSDP never sees them, every rank keeps its whole copy,
exactly as under DDP. A one-process run is never sharded (the trainer keeps the plain model): over one rank sharding
saves nothing and would only change the checkpoint format.

Precision, decided with the trainer's autocast (:mod:`vmim.engine.precision`). bf16 / fp16 runs get
``MixedPrecisionPolicy(param_dtype=bf16/fp16, reduce_dtype=fp32, cast_forward_inputs=False)`` and keep autocast
around the forward. The policy makes the all-gathers move half the bytes and the gradient reduce-scatters sum in
fp32; autocast keeps choosing the dtype per op as under DDP (fp32 softmax, layer norm, losses). Inputs are not cast
at module boundaries: FSDP's default cast would round the fp32 residual stream to bf16 at every block input, which
autocast alone never does. The master weights and the optimizer state stay fp32 shards. fp32 runs get no policy.
fp16 is refused at config time (``train.parallel``): a GradScaler would decide inf/NaN per shard, and ranks could
disagree on skipping a step.

Gradient clipping needs nothing special: ``clip_grad_norm_`` over DTensor gradients computes the global norm (every
rank gets the same value), so the trainer's non-finite check agrees across ranks too.

Code that runs the model outside its ``forward`` (``MaskedModeling.preview``, the reconstruction image) must run on
every rank, between ``model.unshard()`` (the root's own parameters) and ``model.reshard()``: the pretraining task's
``Preview`` hook does so under sharding and logs on rank 0.

Sharded state. :func:`sharded_state` / :func:`load_sharded` are the model's and the optimizer's state dicts through
``torch.distributed.checkpoint.state_dict`` (fully-qualified parameter names as keys, DTensor shards as values),
written and read in place with DCP by :mod:`vmim.engine.checkpoint`. :func:`full_state` gathers them to rank 0 as one
``last.pt``-style checkpoint (optimizer in ``Optimizer.state_dict()``'s own index-keyed form, so a DDP or
one-process run, ``vmim convert``, ``probe``, ``eval`` and ``init`` read it as they read any other), and
:func:`load_full` loads such a checkpoint into a sharded model (a DDP run continued under FSDP).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..models.base import block_modules

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Parameters gathered in bf16 / fp16 with fp32 gradient reduction; fp32 everywhere for ``fp32``."""
    if precision not in DTYPES:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard_model(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """``fully_shard`` each transformer block (innermost first), then the root, over all ranks; in place.

    Args:
        model: the task's model, on ``device``, identical on every rank (same seed).
        precision: the resolved ``train.precision`` (fp32, bf16 or fp16).
        device: this rank's device.

    Returns:
        ``model`` itself, now an ``FSDPModule`` whose parameters are DTensor shards: build the optimizer after this.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision(precision)
    for block in reversed(block_modules(model)):  # children before their parents
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """``{"model", "optimizer"}``: this rank's DTensor shards under fully-qualified names (collective)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: str,
                 legacy_names: dict[str, str] | None = None) -> None:
    """Read a DCP checkpoint folder's ``model`` and ``optimizer`` into the sharded model and optimizer (collective).

    The template from :func:`sharded_state` tells DCP which shard each rank reads; building it fills a fresh
    optimizer's state first (torch steps it once with zero gradients), which the read then overwrites.
    ``legacy_names`` (the model's ``legacy_state_names()``: key -> its name in an earlier layout): a model key the
    folder lacks is read from its earlier name when the folder has that one (a checkpoint written before the key
    moved).
    """
    import torch.distributed.checkpoint as dcp

    state = sharded_state(model, optimizer)
    renamed = {}
    if legacy_names:
        stored = set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
        for key, old in legacy_names.items():
            if f"model.{key}" not in stored and f"model.{old}" in stored and key in state["model"]:
                state["model"][old] = state["model"].pop(key)
                renamed[old] = key
    dcp.load(state, checkpoint_id=path)
    for old, key in renamed.items():
        state["model"][key] = state["model"].pop(old)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, ``Optimizer.state_dict()``-form optimizer state), whole and on the CPU on rank 0; empty
    dicts elsewhere (collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:
        return {}, {}
    return model_sd, native_optimizer_state(optim_sd, model, optimizer)


def load_full(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Load a whole (``last.pt``-style) model and optimizer state, present on every rank, into the sharded ones."""
    set_state_dict(model, optimizer, model_state_dict=model_sd,
                   optim_state_dict=named_optimizer_state(optim_sd, model, optimizer),
                   options=StateDictOptions(full_state_dict=True))


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order (its groups, then each group's params): index i <-> name."""
    name_of = {p: n for n, p in model.named_parameters()}
    return [name_of[p] for group in optimizer.param_groups for p in group["params"]]


def native_optimizer_state(optim_sd: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """``Optimizer.state_dict()``'s index-keyed form of a name-keyed (DCP) optimizer state; as is if already so."""
    groups = optim_sd.get("param_groups", [])
    if not any(isinstance(p, str) for g in groups for p in g["params"]):
        return optim_sd
    index = {name: i for i, name in enumerate(_names(model, optimizer))}
    return {"state": {index[k]: v for k, v in optim_sd["state"].items()},
            "param_groups": [{**g, "params": [index[p] for p in g["params"]]} for g in groups]}


def named_optimizer_state(optim_sd: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The name-keyed (DCP) form of an ``Optimizer.state_dict()``; as is if already name-keyed."""
    groups = optim_sd.get("param_groups", [])
    if any(isinstance(p, str) for g in groups for p in g["params"]):
        return optim_sd
    names = _names(model, optimizer)
    return {"state": {names[k]: v for k, v in optim_sd["state"].items()},
            "param_groups": [{**g, "params": [names[p] for p in g["params"]]} for g in groups]}


__all__ = ["block_modules", "full_state", "is_sharded", "load_full", "load_sharded", "mixed_precision",
           "named_optimizer_state", "native_optimizer_state", "shard_model", "sharded_state"]
