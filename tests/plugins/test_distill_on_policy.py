"""On-policy distillation (GKD): the student samples completions and learns the teacher's distribution on them,
for a same-tokenizer pair (logit KD) and across tokenizers (ULD on the student's samples re-tokenized)."""

import json
import subprocess
import sys

import pytest

from conftest import RECIPES
from ptrain import RecipeError
from ptrain._recipe import load_recipe

ON_POLICY = RECIPES / "distill_tiny_on_policy.toml"
HEADLINE = RECIPES / "distill_tinyllama_gpt2.toml"
# a few minutes of CPU at most: tiny step counts, a small evaluation (the teacher and student are both measured)
SHORT = ["data.num_examples=400", "data.eval_size=16", "eval.max_samples=16", "train.batch_size=16", "train.logging_steps=1",
         "train.warmup_ratio=0.0", "train.lr_scheduler='constant'"]


def test_on_policy_recipes_validate_without_heavy_imports():
    code = (
        "import sys; from ptrain._recipe import load_recipe; "
        f"r = load_recipe({str(ON_POLICY)!r}); d = r.sections['distill']; "
        "assert d.on_policy and d.on_policy_share == 0.5 and d.sample_temperature == 1.0; "
        f"h = load_recipe({str(HEADLINE)!r}, ['distill.on_policy=true', 'distill.lmbda=0.5']).sections['distill']; "
        "assert h.on_policy_share == 0.5 and h.mode == 'auto'; "
        "assert 'torch' not in sys.modules, 'validation imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["distill.on_policy=false"], "distill.lmbda: only applies to on-policy distillation; set distill.on_policy = true or remove it"),
        (["distill.lmbda=1.5"], "distill.lmbda: must be in [0, 1]"),
        (["distill.lmbda=-0.1"], "distill.lmbda: must be in [0, 1]"),
        (["distill.sample_temperature=0"], "distill.sample_temperature: must be > 0"),
        (["distill.mode='sequence'"], "distill.on_policy: on-policy distillation scores the student's samples with the teacher's logits"),
        (["distill.divergence='kl'"], "distill.divergence"),
        (["distill.beta=1"], "distill.beta: must be in (0, 1)"),
        (["distill.max_new_tokens=0"], "distill.max_new_tokens: must be >= 1"),
        (["distill.on_polciy=true"], "distill.on_polciy: unknown key; did you mean 'on_policy'?"),
        (["distributed.backend='fsdp'"], "distill.on_policy: on-policy distillation samples from the student, and FSDP"),
    ],
)
def test_on_policy_option_errors_are_one_line(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(ON_POLICY, overrides)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_off_policy_recipes_keep_their_meaning():
    section = load_recipe(HEADLINE).sections["distill"]
    assert not section.on_policy and section.on_policy_share == 0.0


def samples_and_losses(run):
    samples = [json.loads(line) for line in (run.dir / "distill" / "on_policy_samples.jsonl").read_text().splitlines()]
    history = [e for e in json.loads((run.dir / "log_history.json").read_text()) if "kd_loss" in e and "on_policy" in e]
    return samples, history


def assert_learned_from_own_samples(run, samples, history, batches):
    """The kept samples are the student's: prompts of the training set, completions that are not the dataset's labels."""
    labels = {r["prompt"]: r["completion"] for r in run.train_dataset}
    assert len(samples) == 4 * batches, len(samples)  # KEPT_PER_BATCH rows of every sampled batch
    assert {s["step"] for s in samples} == {e["step"] - 1 for e in history if e["on_policy"] == 1.0}
    assert all(s["prompt"] in labels and s["prompt"].endswith("### Response:\n") for s in samples), samples[0]
    assert all(s["completion_ids"] for s in samples)
    # the report's cost of sampling: time spent, and at least the kept samples' tokens (the loss reads every row's)
    report = run.metrics["distill"]
    assert report["on_policy_sampling_s"] > 0
    assert report["on_policy_sample_tokens"] >= sum(len(s["completion_ids"]) for s in samples)
    assert 0 <= report["on_policy_samples_at_cap"] <= report["on_policy_batches"] * run.recipe.train.batch_size
    assert sum(s["completion"].strip() != labels[s["prompt"]].strip() for s in samples) > len(samples) / 2, samples[:4]


def mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
def test_same_tokenizer_on_policy_learns_the_teacher_on_its_own_samples(run_recipe, trained_tiny_llama, caplog):
    caplog.set_level("INFO", logger="ptrain")
    run = run_recipe(ON_POLICY, f"distill.teacher={trained_tiny_llama.dir}", "train.max_steps=120", *SHORT)
    assert "distill: on-policy, the student samples completions for 50% of batches" in caplog.text
    report = run.metrics["distill"]
    assert report["mode"] == "logit" and report["on_policy"] == 0.5 and report["on_policy_batches"] == 60
    samples, history = samples_and_losses(run)
    assert [e["on_policy"] for e in history] == [1.0, 0.0] * 60  # lmbda 0.5: every other batch, on every run
    # the teacher's KL on the student's fresh samples: 4.2 over the first 5 sampled batches, 2.6 over the last 10
    # at lmbda 1 (seed 42, 2-core CPU); samples differ each batch, hence means and a wide margin
    kd = [e["kd_loss"] for e in history if e["on_policy"] == 1.0]
    assert mean(kd[-10:]) < 0.8 * mean(kd[:5]), kd
    assert_learned_from_own_samples(run, samples, history, 60)


@pytest.mark.slow
def test_cross_tokenizer_on_policy_uses_uld_on_the_students_samples(run_recipe, trained_tiny_llama, caplog):
    caplog.set_level("INFO", logger="ptrain")
    run = run_recipe(
        ON_POLICY, f"distill.teacher={trained_tiny_llama.dir}", "model.name='builtin:tiny-gpt2'", "distill.lmbda=1.0",
        "train.max_steps=40", *SHORT,
    )
    assert "cross-tokenizer distillation, mode 'uld' (the teacher's logits re-aligned to the student's samples)" in caplog.text
    report = run.metrics["distill"]
    assert report["mode"] == "uld" and report["same_vocabulary"] is False and report["on_policy_batches"] == 40
    samples, history = samples_and_losses(run)
    assert [e["on_policy"] for e in history] == [1.0] * 40
    # ULD with matched tokens on the re-tokenized samples: 4.93 over the first 3 batches, 3.85 over the last 5
    # (seed 42; the divergence over the tokens both vocabularies share falls slower than the sorted part alone did)
    kd = [e["kd_loss"] for e in history]
    assert mean(kd[-10:]) < 0.9 * mean(kd[:3]), kd
    assert_learned_from_own_samples(run, samples, history, 40)
