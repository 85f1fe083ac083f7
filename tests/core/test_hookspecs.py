import inspect

from ptrain import hookspecs

HOOKS = [
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "ptrain_spec")
]


def test_the_hooks_exist():
    assert {"load_model", "prepare_data", "build_trainer", "evaluate", "export"} <= set(HOOKS)
    assert {"recipe_sections", "validate_recipe", "data_formats", "data_sources", "reward_functions", "tools", "report_rows",
            "training_setup"} <= set(HOOKS)


def test_every_hook_is_documented():
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Result rule" in doc, f"{name}: docstring must state its result rule"
        assert ":return:" in doc or ":raise" in doc, f"{name}: docstring must state its return value (or what it raises)"
        for param in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f":param {param}:" in doc, f"{name}: parameter {param!r} undocumented"


def test_firstresult_hooks_say_so():
    for name in HOOKS:
        opts = getattr(hookspecs, name).ptrain_spec
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert ("stops at the first non-None result" in doc) == bool(opts.get("firstresult")), name
