"""``train.report_to``: TensorBoard, MLflow (local file store) and W&B (offline) keep the loss curve, the
resolved recipe as parameters and the final metrics as the run's summary, all on this machine."""

import importlib.util
import json
import os

import pytest

from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe_dict
from ptrain.testing import tiny_recipe

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None
IN_CI = bool(os.environ.get("CI") or os.environ.get("PTRAIN_CI"))  # .ci/run sets PTRAIN_CI and installs both extras


def needs(found: bool, what: str, extra: str) -> None:
    """Skip without the optional extra, except in CI, where its absence is a failure."""
    if not found:
        (pytest.fail if IN_CI else pytest.skip)(f'{what} is an optional extra: pip install -e ".[{extra}]"')


def tracked(reporter: str) -> dict:
    recipe = tiny_recipe(["sft"], train={"report_to": [reporter], "max_steps": 4, "logging_steps": 1})
    recipe["output"]["report"] = False
    return recipe


def test_unknown_or_missing_reporters_are_recipe_errors(monkeypatch):
    with pytest.raises(RecipeError, match=r"train.report_to\[0\]: unknown (logger|reporter) 'mlfow'; did you mean 'mlflow'"):
        load_recipe_dict(tracked("mlfow"))
    load_recipe_dict(tracked("none"))  # transformers' own "no reporting" stays valid
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RecipeError, match=r"train.report_to\[0\]: 'wandb' needs the wandb package.*pip install \"ptrain\[wandb\]\""):
        load_recipe_dict(tracked("wandb"))


@pytest.mark.slow
def test_mlflow_local_file_store_has_params_and_metrics(ptrain_run, monkeypatch):
    needs(HAS_MLFLOW, "MLflow", "mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    run = ptrain_run(tracked("mlflow"))
    store = run.dir / "mlruns"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("ptrain")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "test"
    params = found.data.params
    assert params["recipe.train.max_steps"] == "4" and params["recipe.model.name"] == "builtin:tiny-llama"
    assert params["recipe.methods"] == "['sft']" and "learning_rate" in params  # the trainer's arguments too
    metrics = found.data.metrics
    final = json.loads((run.dir / "metrics.json").read_text())["final"]
    assert metrics["final.eval_loss"] == pytest.approx(final["eval_loss"]) and "base.task_metric" in metrics
    losses = client.get_metric_history(found.info.run_id, "loss")
    assert len(losses) == 4  # logged every step by the trainer
    assert mlflow.active_run() is None


def wandb_records(path):
    """The protobuf records of a ``run-*.wandb`` file (a LevelDB-style log: 32 KiB blocks of checksummed chunks)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.slow
def test_wandb_offline_run_has_config_and_summary(ptrain_run, monkeypatch):
    needs(HAS_WANDB, "W&B", "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = ptrain_run(tracked("wandb"))
    (folder,) = (run.dir / "wandb").glob("offline-run-*")
    (log,) = folder.glob("run-*.wandb")  # what `wandb sync` uploads later
    records = wandb_records(log)
    summary, config = {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    final = json.loads((run.dir / "metrics.json").read_text())["final"]
    assert summary["final.eval_loss"] == pytest.approx(final["eval_loss"]) and "base.task_metric" in summary
    assert summary["train/global_step"] == 4 and "train/loss" in summary
    recipe = config["recipe"]["value"] if "value" in config["recipe"] else config["recipe"]
    assert recipe["model"]["name"] == "builtin:tiny-llama" and recipe["train"]["max_steps"] == 4
    assert "learning_rate" in config  # the trainer's arguments too
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)


@pytest.mark.slow
def test_tensorboard_has_the_recipe_and_final_metrics(ptrain_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = ptrain_run(tracked("tensorboard"))
    tags: dict[str, list] = {"scalars": [], "tensors": []}
    for events in (run.dir / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for kind in tags:
            tags[kind] += accumulator.Tags().get(kind, [])
    assert "train/loss" in tags["scalars"] and "final/eval_loss" in tags["scalars"]
    assert any("recipe" in tag for tag in tags["tensors"])
