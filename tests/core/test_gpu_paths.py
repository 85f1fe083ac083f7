"""The CUDA branches, checked without a GPU: which dtype, precision, attention and communication
backend a machine with a GPU gets, and what FSDP becomes there.

These decisions take the device's facts as arguments (detected when left out), so the tables below
are the code's own answers for a GPU; nothing here has run on one (no GPU was available to this
work: see docs/distributed.md, "What has run where").
"""

import logging

import pytest

torch = pytest.importorskip("torch")

from ptrain._errors import RecipeError  # noqa: E402
from ptrain._models import resolve_attention, resolve_dtype  # noqa: E402
from ptrain._training import choose_ddp_backend, precision_flags  # noqa: E402


@pytest.mark.parametrize(
    "cuda, bf16, precision, flags",
    [
        (True, True, "auto", {"bf16": True, "fp16": False}),  # Ampere and later
        (True, False, "auto", {"bf16": False, "fp16": True}),  # V100, T4
        (False, False, "auto", {"bf16": False, "fp16": False}),  # CPU: fp32
        (True, True, "fp32", {"bf16": False, "fp16": False}),
        (True, False, "fp16", {"bf16": False, "fp16": True}),
        (True, True, "bf16", {"bf16": True, "fp16": False}),
    ],
)
def test_mixed_precision_follows_the_gpu(cuda, bf16, precision, flags):
    assert precision_flags(precision, cuda=cuda, bf16=bf16, cpu_bf16=False) == flags


def test_fp16_without_a_gpu_is_a_recipe_error():
    with pytest.raises(RecipeError, match="train.precision = 'fp16' needs a CUDA GPU; use 'bf16', 'auto' or 'fp32'"):
        precision_flags("fp16", cuda=False, bf16=False)


def test_bf16_on_a_cpu_is_autocast():
    assert precision_flags("bf16", cuda=False, bf16=False) == {"bf16": True, "fp16": False}


@pytest.mark.parametrize(
    "cuda, bf16, dtype",
    [(True, True, torch.bfloat16), (True, False, torch.float16), (False, False, torch.float32)],
)
def test_auto_dtype_follows_the_gpu(cuda, bf16, dtype):
    assert resolve_dtype("auto", cuda=cuda, bf16=bf16) is dtype
    assert resolve_dtype("float32", cuda=cuda, bf16=bf16) is torch.float32  # an explicit dtype is kept


def test_this_machine_is_described_by_its_own_facts():
    cuda = torch.cuda.is_available()
    assert precision_flags("auto") == precision_flags("auto", cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize(
    "requested, cuda, flash, chosen, warning",
    [
        ("flash_attention_2", True, True, "flash_attention_2", None),
        ("flash_attention_2", True, False, "sdpa", "needs the flash-attn package (pip install flash-attn); not installed, using 'sdpa'"),
        ("flash_attention_2", False, True, "sdpa", "needs a CUDA GPU; none found, using 'sdpa'"),
        ("sdpa", True, False, "sdpa", None),
        ("eager", False, False, "eager", None),
        ("auto", True, True, None, None),  # transformers picks (sdpa where the model supports it)
    ],
)
def test_attention_choice_and_its_fallback_messages(caplog, requested, cuda, flash, chosen, warning):
    with caplog.at_level(logging.WARNING, logger="ptrain"):
        assert resolve_attention(requested, cuda=cuda, flash_attn=flash) == chosen
    if warning:
        assert f"model.attn_implementation = 'flash_attention_2' {warning}" in caplog.text
    else:
        assert not caplog.records


def test_processes_talk_over_nccl_on_gpus_and_gloo_on_cpus():
    assert choose_ddp_backend("auto", cuda=True) == "nccl"
    assert choose_ddp_backend("auto", cuda=False) == "gloo"
    assert choose_ddp_backend("gloo", cuda=True) == "gloo"
    with pytest.raises(RecipeError, match="distributed.ddp_backend = 'nccl' needs CUDA GPUs; use 'gloo'"):
        choose_ddp_backend("nccl", cuda=False)


def test_fsdp_settings_only_a_gpu_can_run_become_trainer_arguments():
    """What a GPU recipe asks of FSDP reaches the Trainer as transformers 5 expects it (fsdp_config, not the
    deprecated option list), including the settings refused on CPU."""
    from ptrain._distributed import fsdp_arguments, fsdp_cpu_problem
    from ptrain._sections import DistributedSection

    offload = DistributedSection(backend="fsdp", fsdp=["full_shard", "offload", "auto_wrap"])
    assert fsdp_arguments(offload) == {"fsdp": True, "fsdp_config": {"cpu_offload": True, "reshard_after_forward": True}}
    assert fsdp_cpu_problem(offload)[0] == "fsdp"
    hybrid = DistributedSection(backend="fsdp", fsdp=["hybrid_shard"], fsdp_config={"fsdp_version": 1})
    assert fsdp_arguments(hybrid) == {"fsdp": True, "fsdp_config": {"version": 1, "reshard_after_forward": "hybrid_shard"}}
    assert fsdp_cpu_problem(hybrid)[0] == "fsdp_config.fsdp_version"
    plain = DistributedSection(backend="fsdp", fsdp=["shard_grad_op"], fsdp_config={"state_dict_type": "SHARDED_STATE_DICT"})
    assert fsdp_arguments(plain)["fsdp_config"] == {"state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": False}
    assert fsdp_cpu_problem(plain) is None
    assert fsdp_cpu_problem(DistributedSection(backend="ddp", fsdp=["offload"])) is None  # read only with backend = "fsdp"
