"""Several processes past DDP: FSDP through the Trainer (on GPUs and, over gloo, on CPUs), the trained
model handed back whole to rank 0, and a run that loses one of its processes.

The sharding, the sharded checkpoints and their resumption are the Trainer's and accelerate's own;
ptrain translates ``[distributed]`` into their arguments, lets accelerate's FSDP path run on CPU
processes too, and gathers the full weights once training ends so that rank 0 evaluates and exports
an ordinary model.
"""

from __future__ import annotations

import copy
import glob
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptrain._sections import DistributedSection

log = logging.getLogger("ptrain")

FSDP1_ONLY = ("no_shard", "hybrid_shard", "hybrid_shard_zero2")
"""Sharding strategies FSDP2 (``fully_shard``, the default) does not have; they need ``fsdp_config.version = 1``."""


ACCELERATOR_DEVICES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel/*", "/dev/davinci[0-9]*", "/dev/dri/renderD*")
"""Device files of NVIDIA, AMD, Habana/Gaudi, Ascend and Intel GPU drivers."""


def accelerator_visible() -> bool:
    """Whether this machine may have a GPU or another accelerator, judged from device files without
    importing torch. False: CPUs only, for certain; True may be wrong, and run time checks again."""
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def fsdp_cpu_problem(section: DistributedSection) -> tuple[str, str] | None:
    """``(key, message)`` when ``section`` asks for an FSDP setting that cannot run on CPU processes
    (measured with torch 2.13, accelerate 1.15, transformers 5.23), else None."""
    if section.backend != "fsdp":
        return None
    config = {k.removeprefix("fsdp_"): (k, v) for k, v in section.fsdp_config.items()}
    if config.get("version", (None, 2))[1] == 1:
        return (
            f"fsdp_config.{config['version'][0]}",
            "FSDP1 (version = 1) needs GPUs: accelerate 1.15 builds its FSDP1 plugin only for an accelerator "
            "('There are currently no available devices found'); on CPU use version = 2 (the default)",
        )
    offload = config.get("cpu_offload", (None, False))
    if "offload" in section.fsdp or offload[1]:
        return (
            "fsdp" if "offload" in section.fsdp else f"fsdp_config.{offload[0]}",
            "offloading to CPU needs GPUs to offload from: torch 2.13's fully_shard stops on CPU processes "
            "('Cannot access accelerator device when none is available'); leave offload out on CPU",
        )
    return None


def fsdp_arguments(section: DistributedSection) -> dict[str, Any]:
    """TrainingArguments ``fsdp`` / ``fsdp_config`` for ``[distributed] backend = "fsdp"``.

    transformers 5 deprecates the option list in ``fsdp`` ("full_shard auto_wrap"): the options
    become the ``fsdp_config`` entries it would derive from them, and ``fsdp`` is just True.
    """
    config = {k.removeprefix("fsdp_"): v for k, v in section.fsdp_config.items()}
    version = int(config.get("version", 2))
    for option in section.fsdp:
        if option == "offload":
            config.setdefault("cpu_offload", True)
        elif option == "auto_wrap":  # the default policy wraps each transformer block already
            continue
        elif version == 2:  # FSDP2 keeps one choice: free the gathered weights after forward, or not
            config.setdefault("reshard_after_forward", option == "full_shard")
        else:
            config.setdefault("reshard_after_forward", option)
    return {"fsdp": True, "fsdp_config": config}


def fsdp_planned(backend: str) -> bool:
    """Whether this run will shard with FSDP: ``[distributed] backend = "fsdp"``, or an accelerate
    config that turns FSDP on (``accelerate launch --use_fsdp``: ``ACCELERATE_USE_FSDP``)."""
    import os

    return backend == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def use_fsdp_on_cpu(trainer: Any) -> bool:
    """Let accelerate's FSDP path run in CPU processes (gloo), as it runs on GPUs.

    accelerate 1.15 switches FSDP on only for accelerator devices: for CPU processes it keeps the
    Trainer's FSDP plugin out of its state and trains with DDP, without a word. This puts the plugin
    back and marks the state FSDP, so the Trainer shards, checkpoints and resumes through its own
    FSDP code. Call it on every rank after the Trainer is built and before ``train()``; returns
    whether FSDP is on.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin_args = getattr(getattr(trainer, "args", None), "fsdp_plugin_args", None)
    accelerator = getattr(trainer, "accelerator", None)
    if not plugin_args or accelerator is None:
        return False
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    # AcceleratorState copies PartialState's fields each time it is created: both must say FSDP
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    log.debug("FSDP (version %s) on CPU processes over gloo", plugin_args.get("fsdp_version"))
    return True


def model_skeleton(model: Any) -> Any:
    """A copy of ``model`` (modules, buffers, tied weights, adapters) whose parameters take no memory
    (meta device): what the gathered weights are poured into after sharded training."""
    import torch

    memo: dict[int, Any] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = torch.nn.Parameter(torch.empty_like(parameter, device="meta"), requires_grad=parameter.requires_grad)
    return copy.deepcopy(model, memo)


def gather_full_model(trainer: Any, skeleton: Any | None) -> Any | None:
    """Collective (every rank calls it): the trained weights of the sharded ``trainer.model``,
    gathered to rank 0 and poured into ``skeleton``. Rank 0 gets the whole model, on the device it
    trained on; the other ranks get None. The sharded model and its optimizer are released."""
    import gc

    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    device = trainer.args.device
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.accelerator.free_memory()
    if not full:  # the other ranks: their part is done
        trainer.model = trainer.model_wrapped = None
        gc.collect()
        return None
    if skeleton is None:
        raise RuntimeError("the model was sharded with FSDP, but ptrain did not expect it and kept no copy of its shape")
    filled: dict[int, Any] = {}
    for prefix, module in skeleton.named_modules(remove_duplicate=False):
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if id(parameter) not in filled:  # a tied weight is filled once and stays shared
                if key not in full:
                    raise RuntimeError(f"the gathered FSDP state has no {key!r}; cannot rebuild the trained model")
                # in the dtype it was loaded with (FSDP mixed precision keeps float32 copies of bfloat16 weights)
                value = full[key].to(parameter.dtype)
                filled[id(parameter)] = torch.nn.Parameter(value, requires_grad=parameter.requires_grad)
            module._parameters[name] = filled[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            key = f"{prefix}.{name}" if prefix else name
            if buffer is not None and key in full:
                module._buffers[name] = full[key]
    missing = [name for name, p in skeleton.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered FSDP state left {missing[0]!r} empty; cannot rebuild the trained model")
    trainer.model = trainer.model_wrapped = skeleton
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return skeleton.to(device)


PEER_LOST_SIGNS = (
    "Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited",
    "NCCL communicator was aborted", "Socket Timeout", "Connection refused",
)
"""What a collective says when another process of the run has gone (gloo and NCCL wordings)."""


def lost_peer(err: BaseException) -> bool:
    """Whether ``err``, raised in a distributed run, says another process of the run has gone."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", ())
    text = str(err)
    return isinstance(err, backend_error) or (isinstance(err, RuntimeError) and any(sign in text for sign in PEER_LOST_SIGNS))


def peer_lost_message(err: BaseException, step: int, world: int, checkpoint: Any) -> str:
    """One line for a process whose partner process died: what happened, and how to go on."""
    reason = next((sign for sign in PEER_LOST_SIGNS if sign in str(err)), type(err).__name__)
    saved = f"newest complete checkpoint {checkpoint}" if checkpoint else "no complete checkpoint yet"
    return (
        f"another process of this {world}-process run stopped ({reason}) during step {step + 1}; this one stops too; "
        f"{saved}; continue with `ptrain run RECIPE --resume` once every process can start again"
    )
