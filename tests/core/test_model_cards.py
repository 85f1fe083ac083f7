"""Model cards: every exported model and adapter directory holds a Hub-format README.md whose loading snippet works."""

import re

import pytest

from conftest import assert_model_card


@pytest.mark.slow
def test_adapter_and_merged_model_cards_name_base_methods_data_and_metrics(tiny_lora_run):
    run = tiny_lora_run
    for folder, library in ((run.dir / "adapter", "peft"), (run.dir / "model", "transformers")):
        card = assert_model_card(folder, "builtin:tiny-llama")
        assert f"library_name: {library}" in card and "- lora" in card
        assert "- **lora**: r = 4" in card and "| tasks | `builtin:tasks` | alpaca |" in card  # methods and data sources
        assert "max_steps = 6" in card and "Measured: steps 6" in card  # training settings and what was measured
        table = card[card.index("## Results"):card.index("## How to load")]
        assert re.search(r"\| task metric \(base → final\) \| [\d.]+ → [\d.]+ \|", table), table
        assert "adapter size (MiB)" in table  # the method's declared rows, as in the end-of-run table
        # the card's own snippet loads the model (run from the run directory's parent, as the paths are written)
        snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
        scope: dict = {}
        exec(compile(snippet, f"{folder}/README.md", "exec"), scope)  # noqa: S102
        assert scope["model"].config.model_type == "llama" and scope["tokenizer"].eos_token
        if library == "peft":
            assert type(scope["model"]).__name__.startswith("PeftModel")
