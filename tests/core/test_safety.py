"""Safe defaults: no secrets in what a run writes, no remote code unless asked, only safetensors, no half-written artifacts."""

import logging
import shutil
import sys
from pathlib import Path

import pytest

from ptrain._errors import UsageError
from ptrain._redact import RedactingFilter, redact_argv, redact_toml

TOKEN = "hf_" + "k3Y" * 10


def test_argv_secrets_are_masked_in_env_json(monkeypatch):
    from ptrain._lifecycle import environment

    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-123")
    monkeypatch.setattr(sys, "argv", [
        "ptrain", "run", "r.toml", "--set", "hub.token=plain-looking", "--set", f"description=see {TOKEN}",
        "--hub-token", "next-arg-secret", "--set", "note=wandb-secret-value-123", "--set", "train.learning_rate=1e-3",
    ])
    argv = environment(0)["argv"]
    text = " ".join(argv)
    for secret in ("plain-looking", TOKEN, "next-arg-secret", "wandb-secret-value-123"):
        assert secret not in text
    assert "hub.token=***" in argv and "train.learning_rate=1e-3" in argv and "r.toml" in argv


def test_redaction_of_logs_and_resolved_recipes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "env-token-value-42")
    handler = logging.FileHandler(tmp_path / "run.log")
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("ptrain.test-redaction")
    logger.addHandler(handler)
    try:
        logger.warning("downloading with %s and %s", "env-token-value-42", TOKEN)
    finally:
        logger.removeHandler(handler)
        handler.close()
    written = (tmp_path / "run.log").read_text()
    assert "env-token-value-42" not in written and TOKEN not in written and "downloading with *** and ***" in written
    toml = redact_toml('name = "x"\n[hub]\napi_key = "abc"\nhub_token = "def"\nrepo = "me/model"\n')
    assert 'api_key = "***"' in toml and 'hub_token = "***"' in toml and 'repo = "me/model"' in toml
    assert redact_argv(["--token=abc"]) == ["--token=***"]


@pytest.fixture(scope="module")
def builtin_dir():
    from ptrain._models import builtin_checkpoint

    return builtin_checkpoint("tiny-gpt2", 0)


def test_trust_remote_code_is_off_unless_set_and_warns_when_set(builtin_dir, caplog):
    from ptrain import load_pretrained
    from ptrain._sections import ModelSection

    assert ModelSection(name="x").trust_remote_code is False
    with caplog.at_level(logging.WARNING, logger="ptrain"):
        load_pretrained(ModelSection(name=str(builtin_dir), trust_remote_code=True), seed=0)
    assert any("trust_remote_code is on" in r.getMessage() for r in caplog.records)


def test_only_safetensors_weights_are_loaded(builtin_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ptrain import load_pretrained
    from ptrain._sections import ModelSection

    pickled = tmp_path / "pickled"
    shutil.copytree(builtin_dir, pickled)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")  # a pickle: may run code when loaded
    with pytest.raises(UsageError, match="only safetensors"):
        load_pretrained(ModelSection(name=str(pickled)), seed=0)


def test_an_interrupted_export_leaves_nothing_that_looks_complete(tmp_path):
    from types import SimpleNamespace

    from ptrain._core_plugin import export

    class Breaks:
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "config.json").write_text("{}")
            raise KeyboardInterrupt  # Ctrl-C halfway through writing the weights

    run = SimpleNamespace(
        recipe=SimpleNamespace(output=SimpleNamespace(save_model=True)), artifacts={}, dir=tmp_path,
        model=Breaks(), tokenizer=Breaks(), metrics={},
    )
    with pytest.raises(KeyboardInterrupt):
        export(run)
    assert list(tmp_path.iterdir()) == [] and run.artifacts == {}
