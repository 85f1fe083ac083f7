"""The ``ptrain`` command line. Commands import heavy libraries only when they train."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ptrain._errors import ProcessLost, RunInterrupted, UsageError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


MAX_MESSAGE = 600
"""Characters of a one-line message: echoed input (a 100 000-character key) never floods the terminal."""


MAX_WORD = 120
"""Characters of one echoed value (a key, a path, a row) within a message: its middle is cut, the words around it stay."""


def _clip_word(word: str) -> str:
    if len(word) <= MAX_WORD:
        return word
    return f"{word[:70]}…({len(word) - 100} characters)…{word[-30:]}"


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line, at most about ``limit`` characters. The values clip, never the reason: an overlong word
    (a 100 000-character key) loses its middle first, then, if the line is still too long, the line does,
    so what is wrong and how to fix it (the message's start and end) are always shown."""
    line = " ".join(_clip_word(word) for word in str(text).split())
    if len(line) <= limit:
        return line
    head, tail = limit * 2 // 3, limit // 3 - 20
    return f"{line[:head]} …({len(line) - head - tail} characters)… {line[-tail:]}"


def fail_usage(err: UsageError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(clip(str(err)))}", soft_wrap=True)
    sys.exit(EXIT_USAGE)


def describe_failure(err: BaseException) -> str:
    """A runtime failure in one line that says what to do when the cause is the machine (disk, permissions)."""
    import errno

    text = f"{type(err).__name__}: {err}"
    number = getattr(err, "errno", None)
    if number == errno.ENOSPC or "No space left on device" in str(err) or "inline_container" in str(err):
        where = getattr(err, "filename", None)
        return (f"no space left on device{f' while writing {where}' if where else ''}; free space or set output.dir "
                f"(--output-dir) on another disk ({clip(text, 160)})")
    if number in (errno.EROFS, errno.EACCES, errno.EPERM):
        where = getattr(err, "filename", None) or "the run directory"
        return f"cannot write {where}: {err.strerror or err}; make it writable or set --output-dir elsewhere"
    return clip(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ptrain")
def cli() -> None:
    """ptrain: plugin-based, recipe-driven LLM post-training.

    \b
    ptrain run recipes/sft_tiny.toml      train as the recipe says
    ptrain validate RECIPE                check a recipe without running it
    ptrain plan RECIPE                    predicted training memory, before anything loads
    ptrain data RECIPE                    training examples as the model sees them
    ptrain list                           installed methods
    ptrain new-plugin NAME --kind K       scaffold a plugin package (trainer, modifier, data, reward, evaluator)
    ptrain compare runs/a runs/b          compare finished runs side by side
    ptrain chat runs/NAME                 talk to a trained model (--base: next to its base)
    """


def verbose_option(command: Any) -> Any:
    """``--verbose``: what libraries log (warnings included) shown live on the terminal, besides ``run.log``."""
    return click.option(
        "--verbose", is_flag=True, help="Show what the libraries log and warn as it comes (otherwise: run.log only).",
    )(command)


def _route_library_output(verbose: bool) -> Any:
    from ptrain._quiet import capture_terminal, route_library_output

    router = route_library_output(verbose)
    capture_terminal()
    return router


def _load(recipe_path: str, overrides: tuple[str, ...]) -> Any:
    from ptrain._recipe import load_recipe

    try:
        return load_recipe(recipe_path, overrides)
    except UsageError as err:
        fail_usage(err)


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable; applies to every recipe).")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Run directory (default runs/<recipe name>; one recipe only).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the run directory.")
@click.option("--skip-done", is_flag=True, help="Skip a recipe whose run directory already holds a finished run of the same recipe.")
@click.option(
    "--compare", "compare_dir", type=click.Path(file_okay=False),
    help="After the runs, compare them (table, compare.md, compare.png, compare.html) into this directory.",
)
@click.option(
    "--nproc", type=click.IntRange(min=1), default=1, show_default=True,
    help="Processes to train with on this machine (data parallel through torchrun; see docs/distributed.md).",
)
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True, help="Machines taking part (run the same command on each).")
@click.option("--node-rank", type=click.IntRange(min=0), help="This machine's number among --nnodes, 0 to N-1 (0 writes the run directory).")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="Address of node 0, where the machines meet (with --nnodes > 1).")
@verbose_option
def run(
    recipes: tuple[str, ...], overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool,
    skip_done: bool, compare_dir: str | None, nproc: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None,
    verbose: bool,
) -> None:
    """Run RECIPES in order: load, train, evaluate and export as their methods say.

    Several recipes make a pipeline: a later recipe can use an earlier run's output (for example
    distill.teacher = "runs/teacher" or model.name = "runs/teacher/model"). The first failure stops it.
    """
    if output_dir and len(recipes) > 1:
        fail_usage(UsageError("--output-dir names one run directory; with several recipes set output.dir in each, or leave it out"))
    if nproc > 1 and len(recipes) > 1:
        fail_usage(UsageError("--nproc runs one recipe at a time; run the recipes one by one"))
    if nproc > max_processes():
        fail_usage(UsageError(
            f"--nproc {nproc:,}: this machine runs at most {max_processes()} training processes (one per CPU core or GPU); "
            "give a smaller number, and --nnodes to add machines"
        ))
    nodes = _nodes(nnodes, node_rank, rdzv_endpoint, len(recipes))
    _route_library_output(verbose)
    loaded = _load_pipeline(recipes, overrides)  # every recipe is checked before anything runs
    names = [r.output.dir or f"runs/{r.name}" for r in loaded if r is not None]
    clash = next((n for n in names if names.count(n) > 1), None)
    if output_dir is None and clash:
        fail_usage(UsageError(f"two recipes write to {clash}; give them different names (or output.dir)"))
    run_dirs: list[str] = []
    for path, recipe in zip(recipes, loaded, strict=True):
        recipe = recipe or _load(path, overrides)  # it needed an earlier run's output: checked now
        if len(recipes) > 1:
            console.rule(f"[bold]{escape(path)}[/] ({len(run_dirs) + 1}/{len(recipes)})")
        if skip_done and _finished(recipe, output_dir):
            where = output_dir or recipe.output.dir or f"runs/{recipe.name}"
            console.print(f"skipped: {escape(str(where))} already holds a finished run of this recipe")
            run_dirs.append(str(where))
            continue
        run_dirs.append(_run_one(path, recipe, overrides, output_dir, overwrite, resume, nproc, nodes, verbose))
    if compare_dir and run_dirs:
        _print_comparison(tuple(run_dirs), compare_dir)


def _load_pipeline(recipes: tuple[str, ...], overrides: tuple[str, ...]) -> list[Any]:
    """Load and validate every recipe up front. A recipe that refers to a directory an earlier recipe
    of the list will write (``runs/teacher/model``) is checked when its turn comes (None here)."""
    from ptrain._recipe import load_recipe

    loaded: list[Any] = []
    for path in recipes:
        try:
            loaded.append(load_recipe(path, overrides))
        except UsageError as err:
            earlier = [str(r.output.dir or f"runs/{r.name}") for r in loaded if r is not None]
            if not any(folder in str(err) for folder in earlier):
                fail_usage(err)
            loaded.append(None)
    return loaded


def _finished(recipe: Any, output_dir: str | None) -> bool:
    """Whether the run directory holds a finished run of this same recipe."""
    from ptrain._lifecycle import run_path
    from ptrain._redact import redact_toml
    from ptrain._rundir import is_finished

    folder = run_path(recipe, output_dir)
    try:
        before = (folder / "recipe.resolved.toml").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    return is_finished(folder) and before == redact_toml(recipe.to_toml())


def _nodes(nnodes: int, node_rank: int | None, endpoint: str | None, recipes: int) -> tuple[int, int, str] | None:
    """``(nnodes, node_rank, endpoint)`` for a run across machines, None for one machine; usage errors exit."""
    if nnodes == 1:
        if node_rank or endpoint:
            fail_usage(UsageError("--node-rank and --rdzv-endpoint belong with --nnodes N (N > 1); leave them out on one machine"))
        return None
    if recipes > 1:
        fail_usage(UsageError("--nnodes runs one recipe at a time; run the recipes one by one"))
    if node_rank is None or not endpoint:
        fail_usage(UsageError(
            f"--nnodes {nnodes} needs --node-rank (0 to {nnodes - 1}, this machine's number) and --rdzv-endpoint HOST:PORT "
            "(node 0's address), the same endpoint on every machine"
        ))
    if node_rank >= nnodes:
        fail_usage(UsageError(f"--node-rank {node_rank} is out of range for --nnodes {nnodes}; use 0 to {nnodes - 1}"))
    if nnodes > MAX_NODES:
        fail_usage(UsageError(f"--nnodes {nnodes:,}: at most {MAX_NODES:,} machines; check the number"))
    problem = endpoint_problem(endpoint)
    if problem:
        fail_usage(UsageError(f"--rdzv-endpoint {clip(repr(endpoint), 80)} is not HOST:PORT ({problem}); e.g. 10.0.0.1:29500 or [fd00::1]:29500"))
    return nnodes, node_rank, endpoint


MAX_NODES = 4096
"""The most machines ``--nnodes`` takes: past it, a typo rather than a cluster."""
HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with a rendezvous endpoint ``HOST:PORT`` (a host name, an IPv4 address or ``[IPv6]``), or None."""
    import ipaddress

    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        return "no port" if not sep else "no host"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {clip(port, 20)!r} is not a number from 1 to 65535"
    if host.startswith("[") or host.endswith("]") or ":" in host:
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"host {clip(host, 60)!r} is not an IPv6 address in brackets"
        return None
    if not HOSTNAME.fullmatch(host):
        return f"host {clip(host, 60)!r} is not a host name or an IP address"
    return None


def max_processes() -> int:
    """The most ``--nproc`` processes one machine runs: one per CPU core (at least 2), or per GPU where there are more."""
    import glob

    from ptrain._distributed import ACCELERATOR_DEVICES

    gpus = max(len(glob.glob(pattern)) for pattern in ACCELERATOR_DEVICES)
    return max(os.cpu_count() or 1, 2, gpus)


def _run_one(
    path: str, loaded: Any, overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool, nproc: int,
    nodes: tuple[int, int, str] | None = None, verbose: bool = False,
) -> str:
    """Run one loaded recipe in this process (or under torchrun); exits on failure, returns the run directory."""
    if (nproc > 1 or nodes) and "LOCAL_RANK" not in os.environ:
        args = ["run", path, *[a for o in overrides for a in ("--set", o)]]
        args += ["--output-dir", output_dir] if output_dir else []
        args += ["--overwrite"] if overwrite else []
        args += ["--resume"] if resume else []
        args += ["--verbose"] if verbose else []
        code = launch(nproc, args, nodes)
        if code:
            sys.exit(code)
        return output_dir or loaded.output.dir or f"runs/{loaded.name}"
    from ptrain._lifecycle import process_rank

    main_process = process_rank() == 0
    if not main_process:  # other ranks train quietly; rank 0 speaks for the run
        console.quiet = True
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.INFO if main_process else logging.ERROR)
    logger = logging.getLogger("ptrain")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    router = _route_library_output(verbose)
    warnings_before = router.warnings
    console.print(f"[bold]ptrain run[/] {escape(loaded.name)}: methods {escape(', '.join(loaded.methods))} on {escape(loaded.model.name)}")
    if main_process and loaded.trainer_owner is not None:
        _print_run_plan(loaded)
    from ptrain._lifecycle import execute, run_path
    from ptrain._rundir import AlreadyFinished

    result = None
    try:
        result = execute(loaded, output_dir=output_dir, overwrite=overwrite, resume=resume, console=console)
    except UsageError as err:
        if os.environ.get("LOCAL_RANK", "0") != "0":  # every process hits it; each machine's first one says it, once
            sys.exit(EXIT_USAGE)
        fail_usage(err)
    except RunInterrupted as err:
        if main_process:  # every rank stopped at the same step; one message says so
            err_console.print(f"[bold yellow]interrupted:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(130)
    except ProcessLost as err:  # each survivor says so: the main process may be the one that died
        err_console.print(f"[bold red]stopped:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except AlreadyFinished as err:
        console.print(f"nothing to resume: {escape(str(err))}")
        return str(run_path(loaded, output_dir))
    except Exception as err:  # a runtime failure: one line here, the traceback in the log
        where = getattr(err, "ptrain_run_log", None) or f"{run_path(loaded, output_dir)}/run.log"
        err_console.print(f"[bold red]run failed:[/] {escape(describe_failure(err))}\nfull log: {escape(str(where))}", soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    finally:
        logger.removeHandler(handler)
    if not main_process:
        return str(result.dir) if result else ""
    print_results(result.metrics, loaded.name, result.dir)
    print_samples(result.dir / "samples.jsonl", loaded.eval.show_samples)
    library_warnings = router.warnings - warnings_before
    if library_warnings and not verbose:
        console.print(
            f"[dim]{library_warnings} library warning{'s' * (library_warnings != 1)} went to "
            f"{escape(str(result.dir / 'run.log'))} (--verbose shows them as they come)[/]"
        )
    console.print(f"run directory: [bold]{escape(str(result.dir))}[/]")
    return str(result.dir)


def _print_run_plan(loaded: Any) -> None:
    """The plan's one-line figures at the top of a run; a model whose facts only loading tells is said so."""
    from ptrain._plan import plan_training

    try:
        print_plan(plan_training(loaded), brief=True)
    except UsageError as err:
        console.print(f"predicted training memory: {escape(clip(str(err), 200))}")


def launch_command(nproc: int, args: list[str], nodes: tuple[int, int, str] | None = None) -> list[str]:
    """The torchrun command that runs ``ptrain ARGS`` in ``nproc`` processes on this machine, alone
    (``--standalone``) or as node ``node_rank`` of ``nnodes`` meeting at ``endpoint`` (static
    rendezvous: global ranks follow node numbers, so node 0 holds rank 0)."""
    where = ["--standalone"]
    if nodes:
        nnodes, node_rank, endpoint = nodes
        where = [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--rdzv_endpoint={endpoint}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", "-m", "ptrain", *args]


QUIET_TORCHRUN = """
import logging, sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main
logging.getLogger("torch.distributed.elastic.multiprocessing").setLevel(logging.CRITICAL)  # "closing signal", "failed (exitcode"
sys.argv[0] = "torchrun"
try:
    main()
except ChildFailedError as err:
    codes = [failure.exitcode for failure in err.failures.values()]
    said = next((code for code in codes if code and code > 0), None)  # a process that failed said why; torchrun stopped the rest
    if said is None:  # every failed process was killed (out of memory, a signal): none could say so
        for rank, failure in sorted(err.failures.items()):
            print(f"error: torchrun: the process of rank {rank} was killed ({failure.signal_name()})", file=sys.stderr)
    sys.exit(said or 1)
except Exception as err:
    print(f"error: torchrun: {type(err).__name__}: {' '.join(str(err).split())[:300]}", file=sys.stderr)
    sys.exit(1)
"""
"""``python -c`` code that runs torchrun: a failed process's exit code (2 for a usage error) without torchrun's report."""


def launch(nproc: int, args: list[str], nodes: tuple[int, int, str] | None = None) -> int:
    """Run ``ptrain ARGS`` under torchrun and return its exit code.

    Ctrl-C reaches the workers from the terminal; this process only waits for them to save and stop.
    """
    import signal

    command = launch_command(nproc, args, nodes)
    what = f"{nproc} process{'es' if nproc > 1 else ''}" + (f" as node {nodes[1]} of {nodes[0]}" if nodes else "")
    console.print(f"[bold]launching {what}:[/] {escape(' '.join(command[1:]))}", soft_wrap=True)
    # torchrun, less its own report of a failed process (a 45-line ChildFailedError): the processes said what failed
    process = subprocess.Popen([sys.executable, "-c", QUIET_TORCHRUN, *command[3:]])
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


def _clip(text: str, width: int | None = None) -> str:
    width = width or max(40, console.width - 14)
    line = " ⏎ ".join(part for part in str(text).strip().splitlines() if part.strip())
    return line if len(line) <= width else line[: width - 1] + "…"


def print_samples(path: Path, count: int) -> None:
    """The first ``count`` held-out rows: what was asked, what was expected, base and trained answers."""
    if count <= 0 or not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count] if line.strip()]
    mark = {True: "[green]✓[/]", False: "[red]✗[/]"}
    for i, row in enumerate(rows, 1):
        asked = row.get("input") or row.get("instruction") or row["prompt"]
        console.print(f"[bold]sample {i}[/] {escape(_clip(asked))}")
        console.print(f"  expected   {escape(_clip(row['reference']))}")
        if "base_generation" in row:
            base_ok = row.get("base_correct")
            console.print(f"  base    {mark.get(base_ok, ' ')}  {escape(_clip(row['base_generation']))}")
        console.print(f"  trained {mark[bool(row['correct'])]}  {escape(_clip(row['generation']))}")


def print_results(metrics: dict[str, Any], label: str = "run", directory: Path | None = None) -> None:
    """The declared rows (``report_rows``, with their labels) under ``final``, base beside final when measured;
    what no row declares stays in metrics.json."""
    from ptrain._report import stage_rows

    lines = stage_rows(metrics)
    has_base = bool(metrics.get("base")) and any(base for _, base, _ in lines)
    table = Table(title="results", show_lines=False)
    table.add_column("metric")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("final" if has_base else "value", justify="right")
    for name, base, final in lines:
        table.add_row(escape(name), *([escape(base)] if has_base else []), escape(final))
    console.print(table)
    from ptrain._report import run_summary

    extra = run_summary(label, directory, metrics) if directory is not None else None
    if extra is not None:
        header, lines = extra
        more = Table(title="measured by the methods", title_justify="left")
        more.add_column(header[0])
        for name in header[1:]:
            more.add_column(escape(name), justify="right", overflow="fold")
        for line in lines:
            more.add_row(*map(escape, line))
        console.print(more)
    train = metrics.get("train")
    if train:
        console.print(
            "training: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in train.items() if v is not None and k in (
                "steps", "train_loss", "train_time_s", "tokens_per_s", "peak_memory_mb", "memory_above_baseline_mb",
                "trainable_parameters"))
        )


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option("--show", is_flag=True, help="Print the resolved recipe.")
def validate(recipe: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check RECIPE as `run` would, without loading anything heavy (local data files are read, every row checked)."""
    loaded = _load(recipe, overrides)
    if show:
        console.print(loaded.to_toml(), markup=False, highlight=False)
    console.print(f"[green]ok[/]: {escape(recipe)} (methods: {escape(', '.join(loaded.methods))})")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option(
    "--device", metavar="cpu|cuda|<N>GiB",
    help="Plan for this device: cpu (this machine's memory), cuda, or a GPU by its memory (24GiB). Default: this machine.",
)
@click.option("--seq-len", type=click.IntRange(min=1), help="Tokens per sequence (default train.max_length, the most padding reaches).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the facts, every term and the totals.")
@click.option(
    "--measure-speed", is_flag=True,
    help="First measure this machine's matmul throughput (imports torch, ~2 s; cached) for the time per step.",
)
def plan(recipe: str, overrides: tuple[str, ...], device: str | None, seq_len: int | None, as_json: bool, measure_speed: bool) -> None:
    """Predict RECIPE's training memory from its model's config and every method's terms; loads no weights.

    Exits 2 with one line naming the largest term and the recipe key that shrinks it most when the
    prediction exceeds the device's memory.
    """
    from ptrain._plan import parse_device, plan_training, shrink_advice

    loaded = _load(recipe, overrides)
    if measure_speed:
        from ptrain._plan import measure_matmul_gflops

        console.print(f"matmul throughput: {measure_matmul_gflops():,.1f} GFLOP/s (fp32, cached for ptrain plan)")
    try:
        kind, limit = parse_device(device)
        if loaded.trainer_owner is None:
            raise UsageError(f"{recipe}: no method in methods = {loaded.methods!r} trains, so there is no training memory to plan")
        predicted = plan_training(loaded, device=kind, sequence_length=seq_len)
    except UsageError as err:
        fail_usage(err)
    if kind is None and predicted.device == "cpu":
        from ptrain._plan import _system_memory_mb

        limit = _system_memory_mb()
    if as_json:
        click.echo(json.dumps({"facts": predicted.facts.as_dict(), **predicted.as_metrics(), "limit_mb": limit}, indent=2))
    else:
        print_plan(predicted, limit)
    if limit is not None and predicted.peak_mb > limit:
        err_console.print(f"[bold red]does not fit:[/] {escape(shrink_advice(loaded, predicted, limit))}", soft_wrap=True)
        sys.exit(EXIT_USAGE)


def print_plan(predicted: Any, limit: float | None = None, brief: bool = False) -> None:
    """The plan as a table of terms (``brief``: one line), figures as the runs' breakdown has them."""
    facts = predicted.facts
    parts = predicted.breakdown()
    summary = (
        f"predicted training memory on {predicted.device}: peak {predicted.peak_mb:,.0f} MiB, "
        f"{predicted.above_baseline_mb:,.0f} MiB above the baseline ("
        + ", ".join(f"{k.replace('_', ' ')} {v:,.0f}" for k, v in parts.items()) + ")"
    )
    if brief:
        console.print(escape(summary))
        return
    console.print(
        f"[bold]{escape(facts.name)}[/]: {escape(facts.architecture)}, {facts.layers} layers, hidden {facts.hidden_size}, "
        f"{facts.heads} heads ({facts.kv_heads} kv), MLP {facts.intermediate_size}, vocabulary {facts.vocab_size:,}, "
        f"{facts.total_parameters:,} parameters ({escape(facts.dtype)}{', tied head' if facts.tied_embeddings else ''})"
        + ("" if facts.exact else " [yellow](layout not known exactly: counted as llama)[/]")
    )
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("term")
    table.add_column("kind")
    table.add_column("MiB", justify="right")
    table.add_column("from")
    for term in predicted.terms:
        who = f"{term.method}: " if term.method != "core" else ""
        table.add_row(escape(who + term.name), term.kind, f"{term.mib:,.1f}", escape(term.formula))
    console.print(table)
    console.print(escape(summary))
    gpu = predicted.device == "cuda"
    console.print(
        f"baseline {predicted.baseline_mb:,.0f} MiB ({'allocated memory only: arithmetic, not measured here' if gpu else 'the imported libraries'}); "
        f"sequence length {predicted.sequence_length}" + (f"; device memory {limit:,.0f} MiB" if limit else "")
    )
    timing = predicted.step_seconds()
    flops = f"{predicted.step_flops() / 1e9:,.1f} GFLOP per optimizer step"
    if timing:
        console.print(f"time per step: about {timing[0]:,.2f} s ({flops} at the cached {timing[1]:,.1f} GFLOP/s fp32 matmul throughput)")
    else:
        console.print(f"time per step: {flops}; no matmul throughput cached for this device (ptrain plan --measure-speed measures it)")


@cli.command(name="data")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True, help="Examples to show.")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the data summary and each example with its token counts.")
@verbose_option
def data(recipe: str, overrides: tuple[str, ...], count: int, split: str, as_json: bool, verbose: bool) -> None:
    """Show RECIPE's first training examples exactly as the model will see them: prompt and completion
    with their boundary marked, token counts, truncation, and the data's sources and sizes."""
    from ptrain import _preview
    from ptrain._models import load_tokenizer
    from ptrain._quiet import quiet_libraries

    loaded = _load(recipe, overrides)
    _route_library_output(verbose)
    quiet_libraries()
    try:
        tokenizer = load_tokenizer(loaded.model.tokenizer or loaded.model.name, revision=loaded.model.revision,
                                   trust_remote_code=loaded.model.trust_remote_code,
                                   key="model.tokenizer" if loaded.model.tokenizer else "model.name")
        shown, summary = _preview.examples(loaded, tokenizer, count, split)
    except UsageError as err:
        fail_usage(err)
    if as_json:
        click.echo(json.dumps(_preview.as_json(shown, summary), indent=2, ensure_ascii=False))
        return
    _preview.show(shown, summary, console)


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (everything the verbose view shows).")
@click.option("--verbose", "-v", is_flag=True, help="Also each plugin's hooks, recipe sections, data formats, sources, rewards, tools and traits.")
def list_methods(as_json: bool, verbose: bool) -> None:
    """Installed plugins: name, distribution, version, kind (trainer, modifier, data, reward, tools, evaluator) and status."""
    from ptrain._registry import PluginRegistry

    infos = PluginRegistry.discover().inspect_all()
    if as_json:
        click.echo(json.dumps([i.as_json() for i in infos], indent=2))
        return
    columns = ("name", "distribution", "version", "kind", "status")
    cells = [(i.name, i.distribution, i.version, i.kind if i.status == "ok" else "", i.status) for i in infos]
    widths = [max(len(column), *(len(row[k]) for row in cells)) for k, column in enumerate(columns)]
    room = max(console.width - sum(widths) - 2 * len(widths), 20)

    def line(values: tuple[str, ...], description: str) -> str:
        text = "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True))
        return f"{text}  {description if verbose or len(description) <= room else description[: room - 1] + '…'}"

    console.print(f"[bold]{escape(line(columns, 'description'))}[/]", soft_wrap=True)
    for info, values in zip(infos, cells, strict=True):
        detail = info.description if info.status == "ok" else info.error
        colour = {"ok": "green", "disabled": "yellow"}.get(info.status, "red")
        text = escape(line(values, detail))
        console.print(text.replace(f"  {info.status}  ", f"  [{colour}]{info.status}[/]  ", 1), soft_wrap=True)
        if verbose and info.status == "ok":
            declared = [("hooks", info.hooks), ("sections", sorted(info.sections)), ("formats", info.formats),
                        ("sources", info.sources), ("rewards", info.rewards), ("tools", info.tools), ("traits", info.traits)]
            for what, items in declared:
                if items:
                    console.print(f"    {what}: {escape(', '.join(items))}", soft_wrap=True)
    if not verbose:
        console.print("[dim]ptrain list -v: each plugin's hooks, sections, data formats, sources, rewards, tools and traits[/]")


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A float option that must be a number: nan and inf pass click's ranges (every comparison with nan is false)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@cli.command()
@click.argument("target")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="Answer TEXT and exit (repeatable); no conversation.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="Answer each line of this file and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --prompt/--prompts: one JSON object per prompt.")
@click.option("--base", is_flag=True, help="Also answer with the run's base model, side by side.")
@click.option("--variant", metavar="NAME", help="A quantized export of a quantize run (quantized/NAME), e.g. nf4.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="At most the model's positions less the prompt's tokens.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.", callback=_finite)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True, callback=_finite)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Allow a model whose code is not part of transformers to run it.")
@verbose_option
def chat(
    target: str, prompts: tuple[str, ...], prompts_file: str | None, as_json: bool, base: bool, variant: str | None,
    max_new_tokens: int, temperature: float, top_p: float, seed: int, trust_remote_code: bool, verbose: bool,
) -> None:
    """Chat with TARGET: a run directory, a model or adapter directory, or a hub ID.

    \b
    ptrain chat runs/quickstart                     a conversation (/reset, /exit)
    ptrain chat runs/quickstart --base              the base model answers too
    ptrain chat runs/quickstart --prompt "..." --json
    ptrain chat runs/quantize_tiny --variant nf4
    """
    from ptrain import _chat
    from ptrain._quiet import quiet_libraries

    texts = list(prompts)
    if prompts_file:
        try:
            texts += [line for line in Path(prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            fail_usage(UsageError(f"--prompts {prompts_file}: cannot read it ({err})"))
        if not texts:
            fail_usage(UsageError(f"--prompts {prompts_file}: no prompts in it (one per line)"))
    if as_json and not texts:
        fail_usage(UsageError("--json answers --prompt/--prompts; a conversation has no JSON form"))
    if not texts and (sys.stdin is None or sys.stdin.closed):
        fail_usage(UsageError("standard input is closed, so there is no conversation to read; give --prompt or --prompts"))
    _route_library_output(verbose)
    quiet_libraries()
    options = _chat.GenerationOptions(max_new_tokens, temperature, top_p, seed)
    try:
        with err_console.status(f"loading {target}…") if not as_json else contextlib.nullcontext():
            models = _chat.load_models(target, variant=variant, base=base, trust_remote_code=trust_remote_code)
        _chat.check_lengths(models, options)
        if texts:
            _chat.one_shot(models, texts, options, as_json, console)
        else:
            _chat.interactive(models, options, console)
    except UsageError as err:
        fail_usage(err)


@cli.command()
@click.argument("target")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Only this machine: 127.0.0.1, localhost or ::1.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model whose code is not part of transformers to run it.")
def serve(target: str, port: int, host: str, trust_remote_code: bool) -> None:
    """Serve TARGET as an OpenAI-compatible endpoint (transformers serve): a run directory, a model or
    adapter directory, a hub ID or a .gguf file. Ctrl-C stops it.

    \b
    ptrain serve runs/quickstart --port 8000
    ptrain serve runs/quickstart/gguf/q8_0/quickstart-q8_0.gguf
    then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-"), model = the name printed at start
    """
    from ptrain import _serve
    from ptrain._quiet import quiet_libraries

    def announce(served: Any, host: str, port: int) -> None:
        console.print(f"[bold]ptrain serve[/] {escape(served.description)}", soft_wrap=True)
        console.print(f"endpoint: http://{host}:{port}/v1  (chat completions, streaming)", soft_wrap=True)
        console.print(f"model: {escape(served.model_id)}", soft_wrap=True)
        console.file.flush()

    import signal

    def stop(signum: int, frame: Any) -> None:  # SIGTERM stops it as Ctrl-C does (uvicorn re-raises it after shutting down)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    quiet_libraries()
    try:
        _serve.serve(target, host, port, trust_remote_code, announce)
    except UsageError as err:
        fail_usage(err)
    except KeyboardInterrupt:
        pass
    except Exception as err:  # a model transformers cannot load or serve: one line, not a traceback
        err_console.print(f"[bold red]serve failed:[/] {escape(describe_failure(err))}", soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    console.print("server stopped")


@cli.command(name="new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Where to write it (default ./ptrain-NAME).")
@click.option(
    "--kind", type=click.Choice(["trainer", "modifier", "data", "reward", "evaluator"]), default="modifier", show_default=True,
    help="trainer: builds the trainer (like sft, dpo); modifier: shapes what another method builds (like lora); "
    "data: a source with options and a format; reward: a named reward for grpo; evaluator: measures the model.",
)
def new_plugin(name: str, directory: str | None, kind: str) -> None:
    """Scaffold a package for a new plugin NAME of a kind (distribution ptrain-NAME, module ptrain_NAME)."""
    from pathlib import Path

    from ptrain._scaffold import create

    try:
        target = create(name, Path(directory) if directory else None, kind)
    except UsageError as err:
        fail_usage(err)
    console.print(f"[green]created[/] {target}: pip install -e {target} && ptrain list")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--output", "-o", type=click.Path(file_okay=False),
    help="Where to write compare.md, compare.png and compare.html (default: the first run's parent).",
)
@verbose_option
def compare(run_dirs: tuple[str, ...], output: str | None, verbose: bool) -> None:
    """Compare finished runs (their metrics.json) side by side: a table, Markdown, a PNG chart and an HTML report."""
    _route_library_output(verbose)
    _print_comparison(run_dirs, output)


def _print_comparison(run_dirs: tuple[str, ...], output: str | None) -> None:
    from ptrain._html import write_compare_report
    from ptrain._report import compare as compare_runs

    try:
        header, rows, md, png = compare_runs(list(run_dirs), output)
        html = write_compare_report(list(run_dirs), md.parent)
    except UsageError as err:
        fail_usage(err)
    table = Table(title="runs compared")
    table.add_column(header[0])
    for label in header[1:]:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    from ptrain._report import expand, library_differences, read_run

    libraries = library_differences([c for d in run_dirs for c in expand(read_run(d))])
    if libraries:
        console.print(f"[yellow]note:[/] the runs were {escape(libraries)}")
    console.print(f"written: [bold]{md}[/], [bold]{png}[/], [bold]{html}[/]")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
