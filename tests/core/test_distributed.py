"""Several processes: the torchrun launch, the [distributed] section, rank 0 alone writing the run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptrain._cli import cli, launch_command
from ptrain._distributed import accelerator_visible
from ptrain._rundir import MARKER

HERE = Path(__file__).parent
MINIMAL = """
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
"""


def test_nproc_relaunches_the_same_command_under_torchrun(write_recipe, monkeypatch):
    seen = {}
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args, nodes=None: seen.update(nproc=nproc, args=args) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    path = write_recipe(MINIMAL)
    result = CliRunner().invoke(cli, ["run", str(path), "--nproc", "2", "--set", "train.max_steps=3", "--resume"])
    assert result.exit_code == 0, result.output
    assert seen == {"nproc": 2, "args": ["run", str(path), "--set", "train.max_steps=3", "--resume"]}
    command = launch_command(2, seen["args"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["ptrain", *seen["args"]]


def test_nnodes_relaunches_as_one_node_of_a_static_rendezvous(write_recipe, monkeypatch):
    seen = {}
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args, nodes=None: seen.update(nproc=nproc, nodes=nodes) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    path = write_recipe(MINIMAL)
    result = CliRunner().invoke(cli, ["run", str(path), "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "10.0.0.1:29500"])
    assert result.exit_code == 0, result.output
    assert seen == {"nproc": 1, "nodes": (2, 1, "10.0.0.1:29500")}
    command = launch_command(4, ["run", str(path)], seen["nodes"])
    # static rendezvous (torchrun's default backend): global ranks follow --node_rank, so node 0 holds rank 0
    assert command[3:7] == ["--nnodes=2", "--node_rank=1", "--rdzv_endpoint=10.0.0.1:29500", "--nproc_per_node=4"]
    assert "--standalone" not in command


@pytest.mark.parametrize(
    "options, message",
    [
        (["--nnodes", "2"], "--nnodes 2 needs --node-rank (0 to 1"),
        (["--nnodes", "2", "--node-rank", "0"], "needs --node-rank (0 to 1, this machine's number) and --rdzv-endpoint"),
        (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "--node-rank 2 is out of range for --nnodes 2"),
        (["--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "host"], "'host' is not HOST:PORT"),
        (["--node-rank", "1"], "belong with --nnodes N"),
    ],
)
def test_node_options_are_checked_before_launching(write_recipe, monkeypatch, options, message):
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args, nodes=None: pytest.fail("launched"))
    result = CliRunner().invoke(cli, ["run", str(write_recipe(MINIMAL)), *options])
    assert result.exit_code == 2 and message in result.output, result.output


def test_nproc_validates_the_recipe_before_launching(write_recipe, monkeypatch):
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args, nodes=None: pytest.fail("launched a broken recipe"))
    result = CliRunner().invoke(cli, ["run", str(write_recipe(MINIMAL + "[distributed]\nbackend = 'zero'\n")), "--nproc", "2"])
    assert result.exit_code == 2 and "distributed.backend" in result.output


@pytest.mark.parametrize(
    "section, message",
    [
        ("backend = 'deepspeed'", "distributed.deepspeed"),
        ("backend = 'deepspeed'\ndeepspeed = 'missing.json'", "missing.json' is not found"),
        ("fsdp = ['full_shard', 'autowrap']", "did you mean 'auto_wrap'"),
        ("[distributed.fsdp_config]\nmin_num_param = 10", "distributed.fsdp_config.min_num_param"),
        ("deepspeed = 'ds.json'", 'only with backend = "deepspeed"'),
        ("fsdp = ['hybrid_shard']", "'hybrid_shard' exists only in FSDP1; FSDP2 (the default) has full_shard and shard_grad_op"),
        ("fsdp = ['full_shard', 'shard_grad_op']", "distributed.fsdp: names full_shard and shard_grad_op: keep one"),
        ("[distributed.fsdp_config]\nauto_wrap_policy = 'LAYER'", "auto_wrap_policy: 'LAYER' is not one of 'TRANSFORMER_BASED_WRAP'"),
        ("[distributed.fsdp_config]\nstate_dict_type = 'FULL'", "state_dict_type: 'FULL' is not one of"),
        ("timeout = 0", "distributed.timeout: must be a number of seconds >= 1"),
    ],
)
def test_distributed_section_is_validated(write_recipe, section, message):
    text = MINIMAL + ("[distributed]\n" if not section.startswith("[") else "") + section + "\n"
    result = CliRunner().invoke(cli, ["validate", str(write_recipe(text))])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.skipif(accelerator_visible(), reason="on a machine with a GPU these settings are valid")
@pytest.mark.parametrize(
    "section, message",
    [
        ("backend = 'fsdp'\n[distributed.fsdp_config]\nversion = 1",
         "distributed.fsdp_config.version: FSDP1 (version = 1) needs GPUs: accelerate 1.15 builds its FSDP1 plugin only"),
        ("backend = 'fsdp'\nfsdp = ['full_shard', 'offload']", "distributed.fsdp: offloading to CPU needs GPUs to offload from"),
        ("backend = 'fsdp'\n[distributed.fsdp_config]\ncpu_offload = true", "distributed.fsdp_config.cpu_offload: offloading"),
    ],
)
def test_fsdp_settings_that_cannot_run_on_cpu_are_refused_at_validate(write_recipe, section, message):
    """Each was run on this CPU machine and stopped (the quoted error in the message); see docs/distributed.md."""
    result = CliRunner().invoke(cli, ["validate", str(write_recipe(MINIMAL + "[distributed]\n" + section + "\n"))])
    assert result.exit_code == 2 and message in result.output and "(this machine has no GPU)" in result.output, result.output
    assert result.output.strip().count("\n") == 0


@pytest.mark.parametrize(
    "recipe, message",
    [
        (MINIMAL + "[train]\ngradient_checkpointing = true\n[distributed]\nbackend = 'fsdp'\n"
         "[distributed.fsdp_config]\nactivation_checkpointing = true\n",
         "train.gradient_checkpointing: is on, and so is distributed.fsdp_config.activation_checkpointing"),
        (MINIMAL.replace('["sft"]', '["sft", "lora", "qlora"]') + "[distributed]\nbackend = 'fsdp'\n",
         "distributed.backend: qlora is not supported with backend = 'fsdp'"),
        ('methods = ["distill"]\n[model]\nname = "builtin:tiny-llama-small"\n[data]\nsource = "builtin:tasks"\n'
         '[distill]\nteacher = "builtin:tiny-llama"\nbaseline = true\nlabeled = 10\n[distributed]\nbackend = "fsdp"\n',
         "distill.baseline: the baseline is trained and measured on every process"),
    ],
)
def test_fsdp_combinations_that_do_not_compose_are_refused_at_validate(write_recipe, recipe, message):
    result = CliRunner().invoke(cli, ["validate", str(write_recipe(recipe))])
    assert result.exit_code == 2 and message in result.output, result.output


def test_lost_process_is_told_from_other_failures():
    from ptrain._distributed import lost_peer, peer_lost_message

    # the wording gloo used when the test_fsdp kill test SIGKILLed rank 0
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:54931: Connection reset by peer. This is")
    assert lost_peer(gone)
    assert not lost_peer(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not lost_peer(ValueError("Connection reset by peer"))  # only what a collective raises
    line = peer_lost_message(gone, step=4, world=2, checkpoint="runs/x/checkpoints/checkpoint-4")
    assert line == (
        "another process of this 2-process run stopped (Connection reset by peer) during step 5; this one stops too; "
        "newest complete checkpoint runs/x/checkpoints/checkpoint-4; continue with `ptrain run RECIPE --resume` once "
        "every process can start again"
    )


def test_distributed_section_maps_onto_training_arguments(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from ptrain import Run
    from ptrain._recipe import load_recipe_dict
    from ptrain._training import training_arguments

    recipe = load_recipe_dict({
        "methods": ["sft"], "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"},
        "distributed": {"find_unused_parameters": True, "backend": "fsdp", "fsdp": ["shard_grad_op"],
                        "fsdp_config": {"min_num_params": 1000}},
    })
    run = Run(recipe=recipe, dir=tmp_path)
    single = training_arguments(run, TrainingArguments)
    assert not single.fsdp and single.ddp_backend is None  # one process: [distributed] is not read
    monkeypatch.setenv("WORLD_SIZE", "2")
    from ptrain._training import distributed_arguments

    kwargs = distributed_arguments(run)
    # the option list becomes the fsdp_config entries transformers 5 derives from it (the list form is deprecated)
    assert kwargs == {"ddp_backend": "gloo", "ddp_find_unused_parameters": True, "ddp_timeout": 1800, "fsdp": True,
                      "fsdp_config": {"min_num_params": 1000, "reshard_after_forward": False}}


@pytest.mark.slow
def test_two_processes_train_on_different_shards_and_rank0_saves_the_shared_model(tmp_path):
    rows = [{"prompt": f"item {i}: repeat {w}", "completion": w} for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 40)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(f"""
name = "ddp"
methods = ["recorder", "sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "{data}"
eval_size = 8
[train]
max_steps = 6
batch_size = 4
learning_rate = 3e-3
max_length = 32
logging_steps = 2
[eval]
base = false
max_samples = 4
max_new_tokens = 4
[output]
plots = false
""")
    record, out = tmp_path / "record", tmp_path / "run"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "ddp_driver.py"), str(record), "run", str(recipe), "--output-dir", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = [(record / f"seen-rank{r}.txt").read_text().split() for r in (0, 1)]
    for hashes in seen:  # each rank a batch of its own every step (accelerate collates one batch ahead)
        assert 6 * 4 <= len(hashes) <= 7 * 4
    assert not set(seen[0]) & set(seen[1])  # different shards
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 6

    from ddp_driver import parameter_checksum
    from transformers import AutoModelForCausalLM

    rank0, rank1 = (float((record / f"checksum-rank{r}.txt").read_text()) for r in (0, 1))
    saved = parameter_checksum(AutoModelForCausalLM.from_pretrained(out / "model"))
    assert rank0 == rank1 == saved
    # rank 0 alone speaks: one results table, one run-directory line
    assert done.stdout.count("run directory:") == 1 and done.stdout.count("results") == 1
    written = {p.name for p in out.iterdir()}
    assert {"env.json", "metrics.json", "model", "recipe.resolved.toml", "run.log", "samples.jsonl"} <= written
    assert written <= {"checkpoints", "env.json", "log_history.json", "metrics.json", "model", "recipe.resolved.toml",
                       "run.log", "samples.jsonl", "report.html", MARKER}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_node_launches_train_together_over_loopback(tmp_path):
    """Two `ptrain run --nnodes 2` commands, as on two machines, one process each: they meet at node
    0's endpoint and form one world of 2. Each "machine" gets its own --output-dir (its own disk):
    node 1's stays unwritten, because only global rank 0 writes a run directory."""
    recipe = tmp_path / "nodes.toml"
    recipe.write_text(MINIMAL.replace('methods = ["sft"]', 'name = "nodes"\nmethods = ["sft"]') + """tasks = ["reverse"]
num_examples = 120
eval_size = 8
[train]
max_steps = 4
batch_size = 4
learning_rate = 3e-3
max_length = 48
logging_steps = 1
[eval]
base = false
max_samples = 4
max_new_tokens = 4
[output]
plots = false
""")
    endpoint = f"127.0.0.1:{_free_port()}"
    outs = [tmp_path / "node0-disk" / "run", tmp_path / "node1-disk" / "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(outs[rank]),
             "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert "as node 0 of 2" in outputs[0] and "as node 1 of 2" in outputs[1]
    metrics = json.loads((outs[0] / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 4  # both nodes took part
    assert json.loads((outs[0] / "env.json").read_text())["world_size"] == 2
    assert (outs[0] / "model" / "model.safetensors").is_file()
    assert not outs[1].parent.exists(), sorted(outs[1].parent.rglob("*"))  # node 1 wrote nothing
    assert outputs[0].count("run directory:") == 1 and "run directory:" not in outputs[1] and "results" not in outputs[1]
