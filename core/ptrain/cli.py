"""The ``ptrain`` command line. Commands import heavy libraries only when they train."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ptrain.errors import RunInterrupted, UsageError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def fail_usage(err: UsageError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
    sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptrain")
def cli() -> None:
    """ptrain: plugin-based, recipe-driven LLM post-training.

    \b
    ptrain run recipes/sft_tiny.toml      train as the recipe says
    ptrain validate RECIPE                check a recipe without running it
    ptrain list                           installed methods
    ptrain new-plugin NAME                scaffold a method package
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
@click.option(
    "--nproc", type=click.IntRange(min=1), default=1, show_default=True,
    help="Processes to train with on this machine (data parallel through torchrun; see docs/distributed.md).",
)
def run(
    recipe: str, overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool, nproc: int
) -> None:
    """Run RECIPE: load, train, evaluate and export as its methods say."""
    loaded = _load(recipe, overrides)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        args = ["run", recipe, *[a for o in overrides for a in ("--set", o)]]
        args += ["--output-dir", output_dir] if output_dir else []
        args += ["--overwrite"] if overwrite else []
        args += ["--resume"] if resume else []
        sys.exit(launch(nproc, args))
    from ptrain.run import process_rank

    main_process = process_rank() == 0
    if not main_process:  # other ranks train quietly; rank 0 speaks for the run
        console.quiet = True
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.INFO if main_process else logging.ERROR)
    logger = logging.getLogger("ptrain")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    console.print(f"[bold]ptrain run[/] {escape(loaded.name)}: methods {escape(', '.join(loaded.methods))} on {escape(loaded.model.name)}")
    from ptrain.run import execute

    result = None
    try:
        result = execute(loaded, output_dir=output_dir, overwrite=overwrite, resume=resume, console=console)
    except UsageError as err:
        fail_usage(err)
    except RunInterrupted as err:
        if main_process:  # every rank stopped at the same step; one message says so
            err_console.print(f"[bold yellow]interrupted:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except Exception as err:  # a runtime failure: one line here, the traceback in the log
        where = output_dir or loaded.output.dir or f"runs/{loaded.name}"
        err_console.print(f"[bold red]run failed:[/] {type(err).__name__}: {escape(str(err))}\nfull log: {escape(str(where))}/run.log", soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    finally:
        logger.removeHandler(handler)
    if not main_process:
        return
    print_results(result.metrics)
    console.print(f"run directory: [bold]{escape(str(result.dir))}[/]")


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun command that runs ``ptrain ARGS`` in ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "ptrain.cli", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run ``ptrain ARGS`` under torchrun and return its exit code.

    Ctrl-C reaches the workers from the terminal; this process only waits for them to save and stop.
    """
    import signal

    command = launch_command(nproc, args)
    console.print(f"[bold]launching {nproc} processes:[/] {escape(' '.join(command[1:]))}", soft_wrap=True)
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code


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
    """Check RECIPE as `run` would, without loading anything heavy (local data files are parsed)."""
    loaded = _load(recipe, overrides)
    from ptrain.data import check_local_files

    try:
        check_local_files(loaded.data)
    except UsageError as err:
        fail_usage(err)
    if show:
        console.print(loaded.to_toml(), markup=False, highlight=False)
    console.print(f"[green]ok[/]: {escape(recipe)} (methods: {escape(', '.join(loaded.methods))})")


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


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Where to write it (default ./ptrain-NAME).")
def new_plugin(name: str, directory: str | None) -> None:
    """Scaffold a package for a new method NAME (distribution ptrain-NAME, module ptrain_NAME)."""
    from pathlib import Path

    from ptrain.scaffold import create

    try:
        target = create(name, Path(directory) if directory else None)
    except UsageError as err:
        fail_usage(err)
    console.print(f"[green]created[/] {target}: pip install -e {target} && ptrain list")


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
