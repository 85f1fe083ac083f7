"""Preference pairs through the core's data loading: the ``preference`` format and ``builtin:preferences``."""

import json

import pytest

from ptrain._datamix import rendered_rows as load_rows
from ptrain._errors import DataError, RecipeError
from ptrain._recipe import load_recipe_dict
from ptrain._sections import DataSection


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ChatTokenizer:
    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_builtin_preferences_are_task_rows_with_a_wrong_answer():
    train, evaluation = load_rows(DataSection(source="builtin:preferences", tasks=["reverse", "uppercase"], num_examples=80, eval_size=20), 0)
    assert len(train) > 70 and len(evaluation) > 15
    assert not {r["input"] for r in train} & {r["input"] for r in evaluation}
    for row in train + evaluation:
        assert row["chosen"] == row["completion"] == row["output"] != row["rejected"]
        assert row["prompt"].startswith("### Instruction:") and row["input"] in row["prompt"]


def test_preference_columns_are_detected(tmp_path):
    rows = [{"prompt": f"Q{i}: ", "chosen": "yes", "rejected": "no"} for i in range(4)]
    train, _ = load_rows(DataSection(source=str(write_jsonl(tmp_path / "p.jsonl", rows)), eval_size=1), 0)
    assert {(r["chosen"], r["rejected"], r["completion"]) for r in train} == {("yes", "no", "yes")}
    assert all(r["prompt"].startswith("Q") for r in train)


def test_chat_form_explicit_and_implicit_prompt(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "hello"}], "rejected": [{"role": "assistant", "content": "go"}]}
    implicit = {"chosen": user + [{"role": "assistant", "content": "hello"}], "rejected": user + [{"role": "assistant", "content": "go"}]}
    for i, row in enumerate((explicit, implicit)):
        source = write_jsonl(tmp_path / f"c{i}.jsonl", [row] * 3)
        train, _ = load_rows(DataSection(source=str(source), eval_size=1), 0, ChatTokenizer())
        assert train[0]["prompt"] == "<user>hi<assistant>"
        assert (train[0]["chosen"], train[0]["rejected"]) == ("hello", "go")


def test_bad_preference_rows_name_the_row(tmp_path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": ""}])
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: missing or empty 'rejected'"):
        load_rows(DataSection(source=str(source), format="preference", eval_size=0), 0)
    source = write_jsonl(tmp_path / "q.jsonl", [{"chosen": "b", "rejected": "c"}] * 2)
    with pytest.raises(DataError, match=r"q\.jsonl: line 1: without a 'prompt', 'chosen' and 'rejected' must start with the same prompt"):
        load_rows(DataSection(source=str(source), eval_size=0), 0)


def test_unknown_builtin_source_lists_the_bundled_ones():
    recipe = {"methods": ["sft"], "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:prefs"}}
    with pytest.raises(RecipeError, match=r"data\.source: no data source reads 'builtin:prefs'.*builtin:tasks, builtin:preferences.*did you mean 'builtin:preferences'"):
        load_recipe_dict(recipe)


def test_completion_logprobs_agree_with_completion_loss():
    from ptrain import load_pretrained
    from ptrain._evaluation import completion_logprobs, completion_loss
    from ptrain._sections import ModelSection

    model, tokenizer = load_pretrained(ModelSection(name="builtin:tiny-llama"), seed=0)
    prompt, completion = "### Instruction:\nShout the text.\n\n### Response:\n", "APPLE RIVER"
    (logprob,) = completion_logprobs(model, tokenizer, [prompt], [completion])
    full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    prefix = tokenizer(prompt)["input_ids"]
    start = next(i for i, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b) if full[: len(prefix)] != prefix else len(prefix)
    loss = completion_loss(model, tokenizer, [prompt], [completion])
    assert logprob < 0
    assert -logprob / (len(full) - start) == pytest.approx(loss, rel=1e-4)
    a, b = completion_logprobs(model, tokenizer, [prompt, prompt], [completion, completion + " RIVER"], batch_size=2)
    assert a == pytest.approx(logprob, rel=1e-4) and b < a
