import pytest

from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe, parse_override

MINIMAL = """
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
"""


def test_minimal_recipe_fills_defaults(write_recipe):
    recipe = load_recipe(write_recipe(MINIMAL))
    assert recipe.methods == ["sft"]
    assert recipe.name == "recipe"
    assert recipe.train.learning_rate == 2e-5
    assert recipe.sections["sft"].completion_only_loss is True


def test_misspelled_key_names_file_key_and_suggestion(write_recipe):
    path = write_recipe(MINIMAL + "[train]\nlearnig_rate = 1e-4\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path.name) in message
    assert "train.learnig_rate" in message
    assert "did you mean 'learning_rate'" in message


def test_wrong_type_names_expected_type(write_recipe):
    with pytest.raises(RecipeError, match=r"train\.batch_size: expected an integer, got 'big'"):
        load_recipe(write_recipe(MINIMAL + '[train]\nbatch_size = "big"\n'))


def test_bool_is_not_an_integer(write_recipe):
    with pytest.raises(RecipeError, match="train.max_steps: expected an integer"):
        load_recipe(write_recipe(MINIMAL + "[train]\nmax_steps = true\n"))


def test_unknown_method_lists_installed(write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(MINIMAL.replace('["sft"]', '["sfft"]')))
    assert "unknown method 'sfft'" in str(err.value)
    assert "did you mean 'sft'" in str(err.value)
    assert "(installed: " in str(err.value) and "sft" in str(err.value).split("(installed: ")[1]


def test_missing_data_file_names_the_path(write_recipe):
    with pytest.raises(RecipeError, match=r"data file 'nowhere/train\.jsonl' not found"):
        load_recipe(write_recipe(MINIMAL.replace("builtin:tasks", "nowhere/train.jsonl")))


def test_plugin_section_is_validated_too(write_recipe):
    with pytest.raises(RecipeError, match=r"sft\.packnig: unknown key; did you mean 'packing'"):
        load_recipe(write_recipe(MINIMAL + "[sft]\npacknig = true\n"))


def test_section_of_method_not_in_methods(write_recipe):
    with pytest.raises(RecipeError, match=r"section \[sft\] belongs to plugin 'sft', which is not in methods"):
        load_recipe(write_recipe(MINIMAL.replace('["sft"]', '["instruct"]') + "[sft]\npacking = true\n"))


def test_unknown_section_suggests(write_recipe):
    with pytest.raises(RecipeError, match="did you mean 'train'"):
        load_recipe(write_recipe(MINIMAL + "[trian]\nmax_steps = 3\n"))


def test_invalid_toml_names_file(write_recipe):
    path = write_recipe("methods = [\n")
    with pytest.raises(RecipeError, match="recipe.toml: invalid TOML"):
        load_recipe(path)


def test_extends_deep_merges_and_blames_the_right_file(write_recipe):
    write_recipe(MINIMAL + "[train]\nlearning_rate = 1e-3\nbatch_size = 4\n", name="base.toml")
    child = write_recipe('extends = "base.toml"\n[train]\nbatch_size = 16\n', name="child.toml")
    recipe = load_recipe(child)
    assert (recipe.train.learning_rate, recipe.train.batch_size) == (1e-3, 16)
    assert recipe.name == "child"
    write_recipe('extends = "base.toml"\n[train]\nbatch_sise = 16\n', name="bad.toml")
    with pytest.raises(RecipeError, match=r"bad\.toml: train\.batch_sise"):
        load_recipe(child.with_name("bad.toml"))


def test_extends_cycle_is_an_error(write_recipe):
    write_recipe('extends = "b.toml"\n', name="a.toml")
    path = write_recipe('extends = "a.toml"\n', name="b.toml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(path)


def test_overrides_are_typed_and_validated(write_recipe):
    path = write_recipe(MINIMAL)
    recipe = load_recipe(path, ["train.learning_rate=1e-4", "train.report_to=['tensorboard']", "model.name=builtin:tiny-gpt2"])
    assert recipe.train.learning_rate == 1e-4
    assert recipe.train.report_to == ["tensorboard"]
    assert recipe.model.name == "builtin:tiny-gpt2"
    with pytest.raises(RecipeError, match=r"--set: train\.max_steps: expected an integer, got 'many'"):
        load_recipe(path, ["train.max_steps=many"])
    with pytest.raises(RecipeError, match=r"--set: train\.learnig_rate: unknown key; did you mean 'learning_rate'"):
        load_recipe(path, ["train.learnig_rate=0.1"])


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", "a.b c=1"])
def test_bad_override_syntax(text):
    with pytest.raises(RecipeError, match="--set"):
        parse_override(text)


def test_resolved_recipe_round_trips(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(MINIMAL), ["train.max_steps=7"])
    again = write_recipe(recipe.to_toml(), name="resolved.toml")
    assert load_recipe(again).to_table() == recipe.to_table() | {"name": "recipe"}


def test_template_placeholders_checked(write_recipe):
    with pytest.raises(RecipeError, match=r"data\.template: template 'Q: \{input\}' has no \{instruction\} placeholder"):
        load_recipe(write_recipe(MINIMAL + 'template = "Q: {input}"\n'))


def test_bundled_recipes_validate():
    from conftest import RECIPES

    paths = sorted(RECIPES.rglob("*.toml"))  # recipes/phase1/ and recipes/peft/ too
    assert any(p.parent.name == "phase1" for p in paths)
    for path in paths:
        load_recipe(path)
