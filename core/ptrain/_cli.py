"""The ``ptrain`` command line. Commands import heavy libraries only when they train."""

from __future__ import annotations

import contextlib
import json
import logging
import os
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


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 20] + f"… ({len(line) - limit + 20} more characters)"


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
    ptrain data RECIPE                    training examples as the model sees them
    ptrain list                           installed methods
    ptrain new-plugin NAME                scaffold a method package
    ptrain compare runs/a runs/b          compare finished runs side by side
    ptrain chat runs/NAME                 talk to a trained model (--base: next to its base)
    """


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
def run(
    recipes: tuple[str, ...], overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool,
    skip_done: bool, compare_dir: str | None, nproc: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None,
) -> None:
    """Run RECIPES in order: load, train, evaluate and export as their methods say.

    Several recipes make a pipeline: a later recipe can use an earlier run's output (for example
    distill.teacher = "runs/teacher" or model.name = "runs/teacher/model"). The first failure stops it.
    """
    if output_dir and len(recipes) > 1:
        fail_usage(UsageError("--output-dir names one run directory; with several recipes set output.dir in each, or leave it out"))
    if nproc > 1 and len(recipes) > 1:
        fail_usage(UsageError("--nproc runs one recipe at a time; run the recipes one by one"))
    nodes = _nodes(nnodes, node_rank, rdzv_endpoint, len(recipes))
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
        run_dirs.append(_run_one(path, recipe, overrides, output_dir, overwrite, resume, nproc, nodes))
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
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        fail_usage(UsageError(f"--rdzv-endpoint {endpoint!r} is not HOST:PORT (e.g. 10.0.0.1:29500)"))
    return nnodes, node_rank, endpoint


def _run_one(
    path: str, loaded: Any, overrides: tuple[str, ...], output_dir: str | None, overwrite: bool, resume: bool, nproc: int,
    nodes: tuple[int, int, str] | None = None,
) -> str:
    """Run one loaded recipe in this process (or under torchrun); exits on failure, returns the run directory."""
    if (nproc > 1 or nodes) and "LOCAL_RANK" not in os.environ:
        args = ["run", path, *[a for o in overrides for a in ("--set", o)]]
        args += ["--output-dir", output_dir] if output_dir else []
        args += ["--overwrite"] if overwrite else []
        args += ["--resume"] if resume else []
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
    # on an AVX512-BF16 CPU, importing bitsandbytes warns that an optional kernel package ("kernels")
    # is missing; ptrain keeps trained 4-bit models off that path anyway (ptrain._bnb): noise
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    console.print(f"[bold]ptrain run[/] {escape(loaded.name)}: methods {escape(', '.join(loaded.methods))} on {escape(loaded.model.name)}")
    from ptrain._lifecycle import execute, run_path
    from ptrain._rundir import AlreadyFinished

    result = None
    try:
        result = execute(loaded, output_dir=output_dir, overwrite=overwrite, resume=resume, console=console)
    except UsageError as err:
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
    console.print(f"run directory: [bold]{escape(str(result.dir))}[/]")
    return str(result.dir)


def launch_command(nproc: int, args: list[str], nodes: tuple[int, int, str] | None = None) -> list[str]:
    """The torchrun command that runs ``ptrain ARGS`` in ``nproc`` processes on this machine, alone
    (``--standalone``) or as node ``node_rank`` of ``nnodes`` meeting at ``endpoint`` (static
    rendezvous: global ranks follow node numbers, so node 0 holds rank 0)."""
    where = ["--standalone"]
    if nodes:
        nnodes, node_rank, endpoint = nodes
        where = [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--rdzv_endpoint={endpoint}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", "-m", "ptrain", *args]


def launch(nproc: int, args: list[str], nodes: tuple[int, int, str] | None = None) -> int:
    """Run ``ptrain ARGS`` under torchrun and return its exit code.

    Ctrl-C reaches the workers from the terminal; this process only waits for them to save and stop.
    """
    import signal

    command = launch_command(nproc, args, nodes)
    what = f"{nproc} process{'es' if nproc > 1 else ''}" + (f" as node {nodes[1]} of {nodes[0]}" if nodes else "")
    console.print(f"[bold]launching {what}:[/] {escape(' '.join(command[1:]))}", soft_wrap=True)
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
    base, final = metrics.get("base", {}), metrics.get("final", {})
    table = Table(title="results", show_lines=False)
    table.add_column("metric")
    if base:
        table.add_column("base", justify="right")
    table.add_column("final" if base else "value", justify="right")
    for key in dict.fromkeys([*base, *final]):
        value = final.get(key, base.get(key))
        if isinstance(value, dict) and key.endswith("_by_source"):  # a mixture: one line per source
            for source in value:
                name = f"{key.removesuffix('_by_source')} ({source})"
                before = [_fmt((base.get(key) or {}).get(source, ""))] if base else []
                table.add_row(name, *before, _fmt((final.get(key) or {}).get(source, "")))
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            # a mapping of numbers (one mean per reward function, per task): one row per entry
            before, after = base.get(key) or {}, final.get(key) or {}
            for name in dict.fromkeys([*before, *after]):
                table.add_row(*([f"{key}.{name}"] + ([_fmt(before.get(name, ""))] if base else []) + [_fmt(after.get(name, ""))]))
            continue
        if isinstance(value, (dict, list)):
            continue
        row = [key] + ([_fmt(base.get(key, ""))] if base else []) + [_fmt(final.get(key, ""))]
        table.add_row(*row)
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


@cli.command(name="data")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (repeatable).")
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True, help="Examples to show.")
@click.option("--split", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the data summary and each example with its token counts.")
def data(recipe: str, overrides: tuple[str, ...], count: int, split: str, as_json: bool) -> None:
    """Show RECIPE's first training examples exactly as the model will see them: prompt and completion
    with their boundary marked, token counts, truncation, and the data's sources and sizes."""
    from ptrain import _preview
    from ptrain._models import load_tokenizer
    from ptrain._quiet import quiet_libraries

    loaded = _load(recipe, overrides)
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
@click.option("--verbose", "-v", is_flag=True, help="Also each plugin's hooks, recipe sections, data formats, sources and rewards.")
def list_methods(as_json: bool, verbose: bool) -> None:
    """Installed plugins: name, distribution, version, kind (trainer, modifier, data, reward) and status."""
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
                        ("sources", info.sources), ("rewards", info.rewards)]
            for what, items in declared:
                if items:
                    console.print(f"    {what}: {escape(', '.join(items))}", soft_wrap=True)
    if not verbose:
        console.print("[dim]ptrain list -v: each plugin's hooks, sections, data formats, sources and rewards[/]")


@cli.command()
@click.argument("target")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT", help="Answer TEXT and exit (repeatable); no conversation.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="Answer each line of this file and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --prompt/--prompts: one JSON object per prompt.")
@click.option("--base", is_flag=True, help="Also answer with the run's base model, side by side.")
@click.option("--variant", metavar="NAME", help="A quantized export of a quantize run (quantized/NAME), e.g. nf4.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Allow a model whose code is not part of transformers to run it.")
def chat(
    target: str, prompts: tuple[str, ...], prompts_file: str | None, as_json: bool, base: bool, variant: str | None,
    max_new_tokens: int, temperature: float, top_p: float, seed: int, trust_remote_code: bool,
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
    quiet_libraries()
    options = _chat.GenerationOptions(max_new_tokens, temperature, top_p, seed)
    try:
        with err_console.status(f"loading {target}…") if not as_json else contextlib.nullcontext():
            models = _chat.load_models(target, variant=variant, base=base, trust_remote_code=trust_remote_code)
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
    "--kind", type=click.Choice(["trainer", "modifier"]), default="modifier", show_default=True,
    help="trainer: builds the trainer (like sft, dpo); modifier: shapes what another method builds (like lora).",
)
def new_plugin(name: str, directory: str | None, kind: str) -> None:
    """Scaffold a package for a new method NAME (distribution ptrain-NAME, module ptrain_NAME)."""
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
def compare(run_dirs: tuple[str, ...], output: str | None) -> None:
    """Compare finished runs (their metrics.json) side by side: a table, Markdown, a PNG chart and an HTML report."""
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
    console.print(f"written: [bold]{md}[/], [bold]{png}[/], [bold]{html}[/]")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
