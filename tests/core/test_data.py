import json

import pytest

from ptrain._datamix import rendered_rows as load_rows
from ptrain._errors import DataError
from ptrain._sections import DataSection
from ptrain._tasks import TASKS, generate, preference_pairs


def section(source, **kw):
    return DataSection(source=str(source), eval_size=kw.pop("eval_size", 1), **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_generator_is_seeded_and_distinct():
    a = generate(["arithmetic", "reverse"], 200, seed=3)
    assert a == generate(["arithmetic", "reverse"], 200, seed=3)
    assert a != generate(["arithmetic", "reverse"], 200, seed=4)
    assert len({(r["task"], r["input"]) for r in a}) == 200
    for row in a:
        if row["task"] == "reverse":
            assert row["output"] == row["input"][::-1]


def test_builtin_eval_split_is_disjoint_from_train():
    train, evaluation = load_rows(DataSection(source="builtin:tasks", num_examples=300, eval_size=50), 1)
    assert len(train) == 300 and len(evaluation) == 50
    assert not {(r["task"], r["input"]) for r in train} & {(r["task"], r["input"]) for r in evaluation}
    assert train[0]["prompt"].startswith("### Instruction:") and train[0]["completion"] == train[0]["output"]


def test_preference_pairs_reject_a_wrong_answer():
    for pair in preference_pairs(generate(list(TASKS), 40, 0), 0):
        assert pair["chosen"] == pair["output"] and pair["rejected"] != pair["chosen"]


@pytest.mark.parametrize(
    "rows, fmt",
    [
        ([{"prompt": "2+2=", "completion": "4"}] * 3, "prompt_completion"),
        ([{"instruction": "Add", "input": "2 2", "output": "4"}] * 3, "alpaca"),
        ([{"instruction": "Add", "context": "2 2", "response": "4"}] * 3, "dolly"),
    ],
)
def test_formats_are_detected_and_normalised(tmp_path, rows, fmt):
    train, evaluation = load_rows(section(write_jsonl(tmp_path / "d.jsonl", rows)), 0)
    row = train[0]
    assert row["output"] == "4"
    assert row["completion"] == "4"
    if fmt == "prompt_completion":
        assert row["prompt"] == "2+2="
    else:
        assert "Add" in row["prompt"] and "2 2" in row["prompt"]


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    train, _ = load_rows(section(path, columns={"prompt": "question", "completion": "answer"}), 0)
    assert {r["prompt"] for r in train} <= {f"q{i}" for i in range(5)}


def test_csv_and_json_and_parquet(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\nhi,there\nfoo,bar\nx,y\n")
    assert len(load_rows(section(tmp_path / "d.csv"), 0)[0]) == 2
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "a", "completion": "b"}] * 4))
    assert len(load_rows(section(tmp_path / "d.json"), 0)[0]) == 3
    import datasets

    datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 4).to_parquet(str(tmp_path / "d.parquet"))
    assert len(load_rows(section(tmp_path / "d.parquet"), 0)[0]) == 3


def test_malformed_json_line_is_reported_by_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: not valid JSON"):
        load_rows(section(path), 0)


def test_missing_field_is_reported_by_row(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": ""}])
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: missing or empty 'completion'"):
        load_rows(section(path), 0)


def test_unknown_columns_explain_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "b"}] * 3)
    with pytest.raises(DataError, match="cannot tell the data format.*data.columns"):
        load_rows(section(path), 0)


def test_messages_need_a_final_assistant_turn(tmp_path):
    from transformers import AutoTokenizer

    from ptrain._models import ASSETS

    tok = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good] * 3)
    train, _ = load_rows(section(path), 0, tok)
    assert train[0]["prompt"].endswith("<|im_start|>assistant\n") and train[0]["completion"] == "hello"
    bad = {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: the last message must be the assistant"):
        load_rows(section(path), 0, tok)


def test_eval_size_too_large(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    with pytest.raises(DataError, match="cannot spare data.eval_size = 5"):
        load_rows(section(path, eval_size=5), 0)


def test_chat_rendering_uses_the_tokenizer_template():
    from transformers import AutoTokenizer

    from ptrain._models import ASSETS

    tok = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    train, _ = load_rows(DataSection(source="builtin:tasks", num_examples=4, eval_size=2, chat=True), 0, tok)
    row = train[0]
    assert row["prompt"] == f"<|im_start|>user\n{row['instruction']}\n\n{row['input']}<|im_end|>\n<|im_start|>assistant\n"
