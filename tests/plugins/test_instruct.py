"""The instruct method: template randomization, robustness evaluation, and ``ptrain compare``."""

import json

import pytest
from click.testing import CliRunner

from conftest import RECIPES
from ptrain import ALPACA_TEMPLATE
from ptrain._cli import cli
from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe_dict
from ptrain._tasks import TASKS, generate
from ptrain_methods import instruct

BASE = {
    "methods": ["sft", "instruct"],
    "model": {"name": "builtin:tiny-llama"},
    "data": {"source": "builtin:tasks", "tasks": ["reverse", "uppercase"]},
}


def test_builtin_pool_is_compositional_with_a_fixed_heldout_set():
    pool = instruct.builtin_templates()
    assert len(pool) == 8 * 8 * 3
    train = {t.name for t in instruct.training_pool(instruct.InstructSection())}
    heldout = {t.name for t in instruct.heldout_pool(instruct.InstructSection())}
    assert len(train) == 186 and heldout == set(instruct.HELDOUT) and not train & heldout
    # held-out templates are new combinations of parts that training does see
    for name in heldout:
        prefix, answer, sep = name.split("/")
        assert any(t.startswith(prefix + "/") for t in train)
        assert any(t.split("/")[1] == answer for t in train)
        assert any(t.endswith("/" + sep) for t in train)
    # a prompt ending in a space tokenizes differently alone than joined to its answer
    assert not any(marker.endswith(" ") for marker in instruct.ANSWERS.values())
    # the three styles of the source material are in the pool; the primary one is the core's default
    assert pool[instruct.PRIMARY].text == ALPACA_TEMPLATE
    assert pool["plain/plain/newline"].render("Do it.", "x") == "Instruction:\nDo it.\nInput:\nx\nResponse:\n"
    assert pool["chatml/chatml/newline"].render("Do it.", "") == "<|im_start|>user\nDo it.\n<|im_end|>\n<|im_start|>assistant\n"


def test_randomization_is_seeded_per_row():
    rows = [r | {"prompt": "?", "completion": r["output"]} for r in generate(["reverse", "uppercase"], 2000, seed=1)]
    pool = instruct.training_pool(instruct.InstructSection())
    first, used, wordings = instruct.randomize_rows(rows, pool, seed=42, paraphrase=True)
    again, _, _ = instruct.randomize_rows(rows, pool, seed=42, paraphrase=True)
    other, _, _ = instruct.randomize_rows(rows, pool, seed=43, paraphrase=True)
    assert [r["prompt"] for r in first] == [r["prompt"] for r in again]
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
    # a row's template depends on its index only, not on the rows around it
    shorter, _, _ = instruct.randomize_rows(rows[:10], pool, seed=42, paraphrase=True)
    assert [r["prompt"] for r in shorter] == [r["prompt"] for r in first[:10]]
    assert len(used) > 180 and sum(used.values()) == 2000 and max(used.values()) < 30
    assert set(wordings) == set(TASKS["reverse"].instructions) | set(TASKS["uppercase"].instructions)
    for row, out in zip(rows, first, strict=True):
        assert out["input"] in out["prompt"] and out["output"] == row["output"] and out["completion"] == row["output"]
        assert out["instruction"] == row["instruction"]  # raw fields stay as they were
        assert not any(out["template"] == h for h in instruct.HELDOUT)


def test_custom_templates_are_validated_at_recipe_time():
    recipe = load_recipe_dict({**BASE, "instruct": {"templates": ["Q: {instruction} {input}\nA: ", "Do: {instruction}\n"]}})
    pool = instruct.training_pool(recipe.sections["instruct"])
    assert [t.render("Say it.", "hi") for t in pool] == ["Q: Say it. hi\nA: ", "Do: Say it.\nhi\n"]
    assert instruct.heldout_pool(recipe.sections["instruct"]) == []
    with pytest.raises(RecipeError, match=r"instruct\.templates\[1\].*'Q: \{input\}'.*no \{instruction\}"):
        load_recipe_dict({**BASE, "instruct": {"templates": ["{instruction}", "Q: {input}"]}})
    with pytest.raises(RecipeError, match=r"instruct\.heldout\[0\].*unknown placeholder.*output"):
        load_recipe_dict({**BASE, "instruct": {"heldout": ["{instruction} {output}"]}})
    with pytest.raises(RecipeError, match=r"instruct\.heldout\[0\].*also a training template"):
        load_recipe_dict({**BASE, "instruct": {"heldout": [ALPACA_TEMPLATE]}})


def test_template_without_instruction_exits_2(write_recipe):
    text = (RECIPES / "instruct_tiny.toml").read_text() + 'templates = ["Text: {input}\\nAnswer: "]\n'
    path = write_recipe(text)
    for command in ("validate", "run"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 2, result.output
        assert "instruct.templates[0]" in result.output and "Text: {input}" in result.output
        assert "{instruction}" in result.output and "Traceback" not in result.output


def test_prepare_data_wrapper_rerenders_only_training_rows(tmp_path):
    from ptrain import Run

    recipe = load_recipe_dict({**BASE, "data": {**BASE["data"], "num_examples": 300, "eval_size": 20}})
    run = Run(recipe=recipe, dir=tmp_path)
    splits = recipe.plugins.hook.prepare_data(run=run)
    templates = json.loads((tmp_path / "templates.json").read_text())
    assert sum(templates["counts"].values()) == 300 and templates["templates_used"] > 100
    assert set(templates["heldout"]) == set(instruct.HELDOUT) and not set(templates["counts"]) & set(instruct.HELDOUT)
    assert run.metrics["instruct"]["pool_size"] == 186
    train, evaluation = splits.train.to_list(), splits.eval.to_list()
    assert len({r["template"] for r in train}) > 100
    assert all(r["prompt"] == ALPACA_TEMPLATE.format(instruction=r["instruction"], input=r["input"]) for r in evaluation)


# ------------------------------------------------------------------ end to end: the claim of the issue

SHORT = (
    "train.max_steps=500", "data.tasks=['uppercase']", "eval.base=false", "data.eval_size=40", "eval.max_samples=40",
    "train.logging_steps=50",
)
"""The recipes' claim at a size CI affords: one task, 500 steps. Measured over seeds 42, 0, 1 on an AVX512-BF16
CPU (bench/seed_margins/README.md, scenarios instruct_*_500): single template seen 0.625-0.80, held-out mean
0.0-0.0125 (worst 0.0), all-templates spread 0.625-0.80; randomized held-out mean 0.46-0.54 (worst 0.20-0.275),
all-templates spread 0.375-0.475. The worst seed clears every bound below with room: held-out mean gap 0.45 (bound
0.2), spread gap 0.15 (bound 0). At 300 steps randomized was still 0.09-0.18: it needs the steps. The full claim
(two tasks, 1000 steps: held-out 0.47 vs 0.008) is bench/instruct_robustness.py's."""


@pytest.fixture(scope="module")
def single_and_randomized(tmp_path_factory):
    """The single-template baseline and the randomized run: same model, data, steps and seed."""
    from ptrain._lifecycle import execute
    from ptrain._recipe import load_recipe

    root = tmp_path_factory.mktemp("instruct")
    runs = {}
    for name in ("instruct_tiny_single", "instruct_tiny"):
        runs[name] = execute(load_recipe(RECIPES / f"{name}.toml", SHORT), output_dir=str(root / name))
    return runs


@pytest.mark.slow
def test_robustness_metrics_per_seen_and_heldout_template(single_and_randomized):
    single = single_and_randomized["instruct_tiny_single"]
    randomized = single_and_randomized["instruct_tiny"]
    for run in (single, randomized):
        saved = json.loads((run.dir / "metrics.json").read_text())
        assert saved["final"]["templates_by_template"]["heldout"].keys() == set(instruct.HELDOUT)
        assert saved["train"]["steps"] == 500
        final = run.metrics["final"]
        scores = list(final["templates_by_template"]["heldout"].values())
        assert final["templates_heldout_worst"] == min(scores)
        assert final["templates_heldout_spread"] == pytest.approx(max(scores) - min(scores))
    # the randomized run trained on many templates, the baseline on the data's one
    assert randomized.metrics["instruct"]["templates_used"] > 150
    assert single.metrics["instruct"]["templates_used"] == 1
    assert list(single.metrics["final"]["templates_by_template"]["seen"]) == [instruct.PRIMARY]


@pytest.mark.slow
def test_randomized_templates_generalize_to_heldout_templates(single_and_randomized):
    """The issue's claim, same model, data, steps and seed; both runs' numbers are in metrics.json."""
    single = json.loads((single_and_randomized["instruct_tiny_single"].dir / "metrics.json").read_text())["final"]
    randomized = json.loads((single_and_randomized["instruct_tiny"].dir / "metrics.json").read_text())["final"]
    assert single["templates_seen_mean"] >= 0.3, single  # the baseline did learn the task, on its own template
    # on templates never trained on, the randomized run is far better on average and in the worst case
    assert randomized["templates_heldout_mean"] > single["templates_heldout_mean"] + 0.2, (single, randomized)
    assert randomized["templates_heldout_worst"] > single["templates_heldout_worst"], (single, randomized)
    # and its quality depends less on the phrasing: a smaller gap between best and worst template overall.
    # (Over held-out templates alone the baseline's spread is the smaller one, because it fails on all of them.)
    assert randomized["templates_all_spread"] < single["templates_all_spread"], (single, randomized)
    every = [v for group in randomized["templates_by_template"].values() for v in group.values()]
    assert randomized["templates_all_spread"] == pytest.approx(max(every) - min(every))


@pytest.mark.slow
def test_compare_table_chart_and_loss_curves(single_and_randomized, tmp_path):
    import matplotlib.image

    dirs = [str(run.dir) for run in single_and_randomized.values()]
    result = CliRunner().invoke(cli, ["compare", *dirs, "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in markdown.splitlines() if line.startswith("|")}
    assert lines[""] == ["instruct_tiny_single", "instruct_tiny"]
    assert lines["methods"] == ["sft, instruct", "sft, instruct"]
    for label, key in (
        ("held-out templates: mean", "templates_heldout_mean"),
        ("held-out templates: spread", "templates_heldout_spread"),
        ("all templates: spread", "templates_all_spread"),
    ):
        assert [float(c) for c in lines[label]] == pytest.approx(
            [run.metrics["final"][key] for run in single_and_randomized.values()], abs=1e-3
        )
    for label in ("parameters", "trainable parameters", "training time (s)", "peak training memory (MiB)", "size on disk (MiB)", "perplexity (completions)"):
        assert all(lines[label]), label
    assert "held-out templates" in result.output  # the rich table in the terminal
    chart = matplotlib.image.imread(tmp_path / "cmp" / "compare.png")
    assert chart.shape[0] > 200 and chart.shape[1] > 400
    for run in single_and_randomized.values():
        curve = matplotlib.image.imread(run.dir / "loss.png")
        assert curve.shape[0] > 100
        history = json.loads((run.dir / "log_history.json").read_text())
        losses = [e["loss"] for e in history if "loss" in e]
        assert losses[-1] < losses[0] / 2


def test_compare_tolerates_missing_metrics(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"final": {"task_metric": 0.5, "perplexity": 3.0}}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "recipe.resolved.toml").write_text('name = "b"\nmethods = ["quantize"]\n')
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "compare.md").read_text()
    assert "| task metric | 0.5 |  |" in markdown and "| methods |  | quantize |" in markdown
    assert (tmp_path / "compare.png").stat().st_size > 1000
    missing = CliRunner().invoke(cli, ["compare", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.output
