"""The ``ptrain`` command line. Commands import heavy libraries only when they train."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ptrain.errors import UsageError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def fail_usage(err: UsageError) -> None:
    err_console.print(f"[bold red]error:[/] {err}", soft_wrap=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptrain")
def cli() -> None:
    """ptrain: plugin-based, recipe-driven LLM post-training.

    \b
    ptrain run recipes/sft_tiny.toml      train as the recipe says
    ptrain validate RECIPE                check a recipe without running it
    ptrain list                           installed methods
    ptrain compare runs/a runs/b          compare finished runs side by side
    """


def _load(recipe_path: str, overrides: tuple[str, ...]) -> Any:
    from ptrain.recipe import load_recipe

    try:
        return load_recipe(recipe_path, overrides)
    except UsageError as err:
        fail_usage(err)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Run directory (default runs/<recipe name>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the run directory.")
def run(recipe: str, overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool) -> None:
    """Run RECIPE: load, train, evaluate and export as its methods say."""
    loaded = _load(recipe, overrides)
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("ptrain")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    console.print(f"[bold]ptrain run[/] {loaded.name}: methods {', '.join(loaded.methods)} on {loaded.model.name}")
    from ptrain.run import execute

    result = None
    try:
        result = execute(loaded, output_dir=output_dir, overwrite=overwrite, resume=resume, console=console)
    except UsageError as err:
        fail_usage(err)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as err:  # a runtime failure: one line here, the traceback in the log
        where = output_dir or loaded.output.dir or f"runs/{loaded.name}"
        err_console.print(f"[bold red]run failed:[/] {type(err).__name__}: {err}\nfull log: {where}/run.log", soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    finally:
        logger.removeHandler(handler)
    print_results(result.metrics)
    console.print(f"run directory: [bold]{result.dir}[/]")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def print_results(metrics: dict[str, Any]) -> None:
    base, final = metrics.get("base", {}), metrics.get("final", {})
    table = Table(title="results", show_lines=False)
    table.add_column("metric")
    if base:
        table.add_column("base", justify="right")
    table.add_column("final" if base else "value", justify="right")
    for key in dict.fromkeys([*base, *final]):
        if isinstance(final.get(key, base.get(key)), dict):
            continue
        row = [key] + ([_fmt(base.get(key, ""))] if base else []) + [_fmt(final.get(key, ""))]
        table.add_row(*row)
    console.print(table)
    train = metrics.get("train")
    if train:
        console.print(
            "training: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in train.items() if v is not None and k in (
                "steps", "train_loss", "train_time_s", "tokens_per_s", "peak_memory_mb", "trainable_parameters"))
        )


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option("--show", is_flag=True, help="Print the resolved recipe.")
def validate(recipe: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check RECIPE as `run` would, without loading anything heavy."""
    loaded = _load(recipe, overrides)
    if show:
        console.print(loaded.to_toml(), markup=False, highlight=False)
    console.print(f"[green]ok[/]: {recipe} (methods: {', '.join(loaded.methods)})")


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_methods(as_json: bool) -> None:
    """Installed methods, their distributions, hooks and load status."""
    from ptrain.plugins import PluginRegistry

    infos = PluginRegistry.discover().inspect_all()
    if as_json:
        click.echo(json.dumps([i.as_json() for i in infos], indent=2))
        return
    table = Table(title="installed methods")
    for column in ("name", "distribution", "version", "hooks", "status", "description"):
        table.add_column(column)
    for info in infos:
        status = {"ok": "[green]ok[/]", "disabled": "[yellow]disabled[/]"}.get(info.status, f"[red]{info.status}[/]")
        detail = info.description if info.status == "ok" else info.error
        table.add_row(info.name, info.distribution, info.version, ", ".join(info.hooks), status, detail)
    console.print(table)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--output", "-o", type=click.Path(file_okay=False), help="Where to write compare.md and compare.png (default: the first run's parent)."
)
def compare(run_dirs: tuple[str, ...], output: str | None) -> None:
    """Compare finished runs (their metrics.json) side by side: a table, Markdown and a PNG chart."""
    from ptrain.compare import compare as compare_runs

    try:
        header, rows, md, png = compare_runs(list(run_dirs), output)
    except UsageError as err:
        fail_usage(err)
    table = Table(title="runs compared")
    table.add_column(header[0])
    for label in header[1:]:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"written: [bold]{md}[/], [bold]{png}[/]")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
