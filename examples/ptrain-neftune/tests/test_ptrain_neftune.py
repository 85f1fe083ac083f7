"""NEFTune as a modifier: it composes with sft and with sft + lora, and cannot stand alone."""

from pathlib import Path

import pytest

from ptrain import RecipeError
from ptrain.testing import tiny_recipe

PLUGINS = {"neftune": "ptrain_neftune"}  # in-process: these tests also pass before `pip install -e .`
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "neftune_lora_tiny.toml"


def test_a_modifier_needs_a_trainer_owner(ptrain_validate):
    with pytest.raises(RecipeError, match=r"methods: 'neftune' shapes the trainer another method builds, and no method in methods builds one"):
        ptrain_validate(tiny_recipe(["neftune"]), plugins=PLUGINS)
    recipe = ptrain_validate(tiny_recipe(["sft", "neftune"]), plugins=PLUGINS)
    assert recipe.trainer_owner == "sft" and recipe.section("neftune").alpha == 5.0


def test_alpha_is_checked(ptrain_validate):
    with pytest.raises(RecipeError, match=r"neftune\.alpha: must be in \(0, 100\]"):
        ptrain_validate(tiny_recipe(["sft", "neftune"], neftune={"alpha": 0}), plugins=PLUGINS)


@pytest.mark.slow
@pytest.mark.parametrize("methods", [["sft", "neftune"], ["sft", "lora", "neftune"]])
def test_noise_reaches_the_trainer_of_another_method(ptrain_run, methods):
    run = ptrain_run(tiny_recipe(methods, train={"max_steps": 6, "learning_rate": 3e-3}, neftune={"alpha": 10.0}), plugins=PLUGINS)
    assert run.trainer.args.neftune_noise_alpha == 10.0  # the argument reached the trainer sft built
    assert run.metrics["neftune"] == {"alpha": 10.0, "steps_with_noise": 6}  # the callback saw noise at every step
    assert run.metrics["train"]["last_logged_loss"] < run.metrics["train"]["first_logged_loss"]
    # after training the noise is off again: evaluation sees clean embeddings
    assert getattr(run.model.get_input_embeddings(), "neftune_noise_alpha", None) is None


def test_the_worked_recipe_validates(ptrain_validate):
    recipe = ptrain_validate(str(RECIPE), plugins=PLUGINS)
    assert recipe.methods == ["sft", "lora", "neftune"] and recipe.train.max_steps == 200
