"""The distill method: validation, tokenizer detection, and end-to-end runs against the trained tiny teacher."""

import json
import subprocess
import sys

import pytest

from conftest import RECIPES, assert_model_card
from ptrain import RecipeError
from ptrain._recipe import load_recipe

HEADLINE = RECIPES / "distill_tinyllama_gpt2.toml"
OFFLINE = RECIPES / "distill_tiny_offline.toml"
SAME = RECIPES / "distill_tiny_same_tokenizer.toml"


def test_headline_recipe_validates_offline_without_heavy_imports():
    code = (
        "import sys; from ptrain._recipe import load_recipe; "
        f"r = load_recipe({str(HEADLINE)!r}); "
        "assert r.sections['distill'].teacher == 'TinyLlama/TinyLlama-1.1B-Chat-v1.0'; "
        "assert r.model.name == 'gpt2-medium'; "
        "assert (r.sections['distill'].temperature, r.sections['distill'].alpha) == (2.0, 0.5); "
        "assert 'torch' not in sys.modules, 'validation imported torch'"
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize(
    "override,message",
    [
        ("distill.alpha=1.5", "distill.alpha: must be in [0, 1]"),
        ("distill.temperature=0", "distill.temperature: must be > 0"),
        ("distill.teacher='builtin:nope'", "unknown builtin model 'builtin:nope'"),
        ("distill.teacher='./no/such/dir'", "distill.teacher: model directory './no/such/dir' not found"),
        ("distill.mode='logits'", "distill.mode"),
        ("distill.labeled=-5", "distill.labeled"),
    ],
)
def test_section_errors(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(HEADLINE, [override])
    assert message in str(err.value)


def test_distill_and_sft_both_build_the_trainer():
    with pytest.raises(RecipeError, match="both build the trainer"):
        load_recipe(HEADLINE, ["methods=['distill', 'sft']"])


def test_vocabulary_comparison():
    from transformers import AutoTokenizer

    from ptrain._models import ASSETS
    from ptrain_methods.distill import same_vocabulary

    llama = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    gpt2 = AutoTokenizer.from_pretrained(ASSETS / "tiny-gpt2")
    assert same_vocabulary(llama, AutoTokenizer.from_pretrained(ASSETS / "tiny-llama"))
    assert not same_vocabulary(llama, gpt2)


def test_completion_ids_finds_the_completion_start():
    from transformers import AutoTokenizer

    from ptrain._models import ASSETS
    from ptrain_methods.distill.losses import completion_ids

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-gpt2")
    full, start = completion_ids(tokenizer, "### Response:\n", "DLROW OLLEH")
    assert tokenizer.decode(full[start:], skip_special_tokens=True).strip() == "DLROW OLLEH"
    assert full[-1] == tokenizer.eos_token_id


@pytest.mark.slow
def test_cross_tokenizer_twin_beats_the_labeled_only_baseline(run_recipe, trained_tiny_llama, caplog):
    """The offline twin of the headline: llama-like teacher, gpt2-like student, 300 labeled rows."""
    from ptrain_methods.distill import CACHE

    caplog.set_level("INFO", logger="ptrain")
    run = run_recipe(OFFLINE, f"distill.teacher={trained_tiny_llama.dir}", "train.max_steps=400")
    report = json.loads((run.dir / "metrics.json").read_text())["distill"]
    assert report["mode"] == "sequence" and report["same_vocabulary"] is False
    assert "cross-tokenizer distillation" in caplog.text
    assert report["labeled_rows"] == 300 and report["teacher_answered_rows"] > 1000
    for who in ("teacher", "student", "baseline"):
        assert set(report[who]) >= {"parameters", "generation_tokens_per_s", "task_metric", "eval_loss", "memory_footprint_mb"}
    assert report["student"]["size_on_disk_mb"] > 0 and report["teacher"]["size_on_disk_mb"] > 0
    # The recipe's 1000 steps give exact match 0.43 distilled vs 0.05 baseline (bench/distill_cross/); CI runs
    # 400, where neither answers exactly yet (0.0-0.03 both) but the direction shows in the eval loss: baseline
    # minus student 1.48, 1.01, 1.04 over seeds 42, 0, 1 (bench/seed_margins/README.md, distill_cross_400).
    assert report["student"]["eval_loss"] < report["baseline"]["eval_loss"] - 0.5, report
    assert report["quality_ratio"] == pytest.approx(report["student"]["task_metric"] / report["teacher"]["task_metric"], abs=1e-3)

    assert (run.dir / "distill" / CACHE).is_file()
    card = assert_model_card(run.dir / "model", "builtin:tiny-gpt2")  # the student's card shows the teacher's column
    assert "teacher" in card and "student / teacher task metric" in card


def test_teacher_answers_are_cached_and_resumed(tmp_path, caplog):
    """A rerun generates only the prompts without a cached answer, even after a line cut short."""
    import logging
    from types import SimpleNamespace

    from ptrain_methods.distill import CACHE, load_teacher, teacher_answers

    caplog.set_level("INFO", logger="ptrain")
    recipe = load_recipe(OFFLINE, ["distill.teacher='builtin:tiny-llama'", "distill.max_new_tokens=3"])
    run = SimpleNamespace(
        recipe=recipe, section=lambda name: recipe.sections[name], dir=tmp_path, log=logging.getLogger("ptrain"), is_main_process=True
    )
    teacher, tokenizer = load_teacher(run)
    prompts = [f"### Instruction:\nReverse the letters of the text.\n\n### Input:\nword{i}\n\n### Response:\n" for i in range(12)]
    first = teacher_answers(run, teacher, tokenizer, prompts)
    assert set(first) == set(prompts) and "12 to generate" in caplog.text
    cache = tmp_path / "distill" / CACHE
    lines = cache.read_text().splitlines()
    assert len(lines) == 12
    cache.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:10])  # lose 3 rows, one cut mid-line
    second = teacher_answers(run, teacher, tokenizer, prompts)
    assert "9 teacher answers cached, 3 to generate" in caplog.text
    assert all(second[p] == first[p] for p in prompts[:9])
    reread = [json.loads(line) for line in cache.read_text().splitlines()[10:]]
    assert [row["prompt"] for row in reread] == prompts[9:]
    teacher_answers(run, teacher, tokenizer, prompts)
    assert "12 teacher answers cached, 0 to generate" in caplog.text


@pytest.mark.slow
def test_same_tokenizer_logit_kd_student_is_close_and_faster(run_recipe, trained_tiny_llama):
    run = run_recipe(SAME, f"distill.teacher={trained_tiny_llama.dir}")
    report = run.metrics["distill"]
    assert report["mode"] == "logit" and report["same_vocabulary"] is True
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    history = json.loads((run.dir / "log_history.json").read_text())
    kd = [e["kd_loss"] for e in history if "kd_loss" in e]
    assert kd and kd[-1] < kd[0] / 2, kd
    # measured over seeds 42, 0, 1 (bench/seed_margins/README.md, distill_same): quality ratio 0.99, 1.28, 1.14
    # at 2.16x, 1.95x, 2.23x the teacher's tokens/s (the student has half the layers; a more loaded run of the same
    # sweep gave 1.14x-1.47x, hence the bound 1.0); student exact match 0.49-0.52
    assert report["quality_ratio"] >= 0.8, report
    assert report["speedup"] > 1.0, report
    # one figure per model: the student's tokens/s and answers are the core's final evaluation's
    assert report["student"]["generation_tokens_per_s"] == run.metrics["final"]["generation_tokens_per_s"]
    assert report["student"]["task_metric"] == run.metrics["final"]["task_metric"]
    assert report["student"]["task_metric"] > run.metrics["base"]["task_metric"], report
    assert report["student"]["eval_loss"] < run.metrics["base"]["eval_loss"] / 2, report


@pytest.mark.slow
def test_under_bf16_both_models_train_in_it_and_the_student_is_evaluated_as_exported(run_recipe, trained_tiny_llama, monkeypatch):
    """The chunked KD loss reads the backbones' hidden states, outside the student forward the Trainer casts, and the
    teacher is no model the Trainer prepared: the loss runs under the run's autocast itself. The student's on-policy
    samples are generated under one autocast for the whole call (between its forward passes too, so autocast's cast
    weights are kept, not cast again for every token). After training the student's forward is its own again (fp32,
    as the base evaluation and the exported weights run)."""
    import torch
    from transformers import LlamaForCausalLM

    import ptrain_methods.distill.trainer as distill_trainer

    losses, decoding = [], []
    chunked = distill_trainer.chunked_logit_kd_loss
    prepare = LlamaForCausalLM.prepare_inputs_for_generation

    def recording_loss(*args, **kwargs):
        losses.append(torch.is_autocast_enabled("cpu"))
        return chunked(*args, **kwargs)

    def recording_prepare(self, *args, **kwargs):  # called by generate at every step, outside the forward
        decoding.append(torch.is_autocast_enabled("cpu"))
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(distill_trainer, "chunked_logit_kd_loss", recording_loss)
    monkeypatch.setattr(LlamaForCausalLM, "prepare_inputs_for_generation", recording_prepare)
    run = run_recipe(
        SAME, f"distill.teacher={trained_tiny_llama.dir}", "train.precision='bf16'", "train.max_steps=4",
        "distill.on_policy=true", "distill.lmbda=0.5", "distill.max_new_tokens=8",
        "data.num_examples=64", "data.eval_size=4", "eval.max_samples=4", "eval.base=false",
    )
    assert run.metrics["train"]["precision"] == "bf16" and losses == [True] * 4, losses
    assert run.metrics["distill"]["on_policy_batches"] == 2
    # the two sampled batches' decoding steps under autocast, then the final evaluation's (student, teacher) in fp32
    cast = decoding.index(False)
    assert 2 <= cast <= 2 * 8 and not any(decoding[cast:]), decoding
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        logits = run.model(input_ids=ids).logits
        fp32 = type(run.model).forward(run.model, input_ids=ids).logits
    assert torch.equal(logits, fp32)  # under the trainer's autocast wrapper they would differ
    assert "generate" not in vars(run.model) and "_original_forward" not in vars(run.model)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_teacher_loads_quantized_frozen_and_in_eval_mode(bits):
    from types import SimpleNamespace

    from ptrain_methods.distill import load_teacher

    recipe = load_recipe(OFFLINE, ["distill.teacher='builtin:tiny-llama'", f"distill.teacher_load_in='{bits}'"])
    run = SimpleNamespace(recipe=recipe, section=lambda name: recipe.sections[name])
    teacher, tokenizer = load_teacher(run)
    assert getattr(teacher, f"is_loaded_in_{bits}") is True
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert len(tokenizer) == teacher.config.vocab_size
