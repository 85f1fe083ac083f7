"""``ptrain chat TARGET``: talk to a trained model, alone or next to its base model.

TARGET is a ptrain run directory, a model directory, an adapter directory, a hub ID or
``builtin:NAME``. Every model is loaded through :func:`ptrain.load_pretrained` (the one loading
rule: safetensors only, remote code off unless asked for). A run directory is read the way the
run wrote it:

* ``adapter/`` (a ``lora`` run): the base model of the run's recipe plus the adapter, not merged
  (peft); its base answers with the adapter switched off, so ``--base`` costs no second model;
* ``quantized/<variant>/`` (a ``quantize`` run), chosen with ``--variant``;
* otherwise ``model/``.

Prompts are rendered as the run rendered its training data (``metrics.json`` ``data.prompt``):
the chat template for chat-trained runs (multi-turn), else the recipe's prompt template around
the message (one turn at a time). A model outside a run uses its chat template if it has one,
else the text as it is.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain import _paths
from ptrain._errors import UsageError

log = logging.getLogger("ptrain")
TARGET_KEY = "TARGET"


@dataclass
class Rendering:
    """How a user message becomes the text the model continues."""

    mode: str
    """``chat`` (the tokenizer's chat template, multi-turn), ``template`` (a prompt template, one
    turn) or ``plain`` (the message as it is, one turn)."""
    template: str = "{instruction}"

    @property
    def multi_turn(self) -> bool:
        return self.mode == "chat"

    def prompt(self, tokenizer: Any, history: list[dict[str, str]], message: str) -> str:
        if self.mode == "chat":
            messages = [*history, {"role": "user", "content": message}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.mode == "template":
            return self.template.format(instruction=message)
        return message


@dataclass
class ChatModel:
    """One model that answers: the trained one, or its base."""

    label: str
    model: Any
    tokenizer: Any
    rendering: Rendering
    description: str
    adapter_off: bool = False
    """The base of an adapter model: answer with the adapter switched off."""
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0: greedy (the same answer every time, as the evaluation generates)."""
    top_p: float = 1.0
    seed: int = 0


# ------------------------------------------------------------------ finding what to load


def read_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved recipe and metrics of a run directory (metrics may be empty for an unfinished run)."""
    try:
        recipe = tomllib.loads((folder / "recipe.resolved.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{folder}: cannot read recipe.resolved.toml ({err}); is it a directory written by `ptrain run`?") from None
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    return recipe, metrics if isinstance(metrics, dict) else {}


def model_section(recipe: dict[str, Any], folder: Path, trust_remote_code: bool) -> Any:
    """The run's ``[model]`` section: how its base model is loaded."""
    from ptrain._schema import build
    from ptrain._sections import ModelSection

    table = dict(recipe.get("model") or {})
    if not table.get("name"):
        raise UsageError(f"{folder}/recipe.resolved.toml has no model.name; is it a directory written by `ptrain run`?")
    table["trust_remote_code"] = bool(table.get("trust_remote_code")) or trust_remote_code
    try:
        return build(ModelSection, table, "model", lambda key: str(folder / "recipe.resolved.toml"))
    except Exception as err:  # a recipe written by another ptrain version
        raise UsageError(f"{folder}/recipe.resolved.toml: {err}") from None


def run_rendering(recipe: dict[str, Any], metrics: dict[str, Any], tokenizer: Any) -> Rendering:
    """How the run rendered its prompts: saved by the run (``metrics.json`` ``data.prompt``), else told from its recipe."""
    saved = (metrics.get("data") or {}).get("prompt") if isinstance(metrics.get("data"), dict) else None
    data = recipe.get("data") or {}
    chat = saved.get("chat") if isinstance(saved, dict) else data.get("chat", False)
    template = saved.get("template_no_input") if isinstance(saved, dict) else data.get("template_no_input")
    if chat and getattr(tokenizer, "chat_template", None):
        return Rendering("chat")
    if template:
        return Rendering("template", template)
    return model_rendering(tokenizer) if not isinstance(saved, dict) else Rendering("plain")


def model_rendering(tokenizer: Any) -> Rendering:
    return Rendering("chat") if getattr(tokenizer, "chat_template", None) else Rendering("plain")


def check_remote_code(folder: Path, trust_remote_code: bool) -> None:
    """A one-line error, before loading, for a model whose code is not part of transformers."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and config.get("auto_map") and not trust_remote_code:
        raise UsageError(
            f"{folder}: this model needs code of its own (config.json auto_map: {', '.join(config['auto_map'])}) and ptrain "
            "runs no downloaded code by default; pass --trust-remote-code if you trust its source"
        )


def _load(name: str | Any, trust_remote_code: bool, **kwargs: Any) -> tuple[Any, Any]:
    from ptrain._models import load_pretrained
    from ptrain._sections import ModelSection

    like = ModelSection(name="chat", trust_remote_code=trust_remote_code)
    if isinstance(name, str):
        return load_pretrained(name, like=like, key=TARGET_KEY, **kwargs)
    return load_pretrained(name, key=TARGET_KEY, **kwargs)


def _with_adapter(base: Any, adapter: Path) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{adapter}: cannot load the adapter onto its base model ({first})") from None


def load_models(target: str, *, variant: str | None = None, base: bool = False, trust_remote_code: bool = False) -> list[ChatModel]:
    """The model TARGET names (and its base model with ``base``), ready to answer."""
    folder = _paths.expand(target) if _paths.is_local(target) else None
    if folder is not None and not folder.exists():
        raise UsageError(f"{target}: no such directory; give a run directory, a model directory or a hub ID")
    if folder is not None and (folder / "recipe.resolved.toml").is_file():
        return _load_run(folder, variant, base, trust_remote_code)
    if variant:
        raise UsageError(f"--variant picks a quantized export of a run directory; {target} is not one")
    if folder is not None and (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        return _load_adapter_dir(folder, base, trust_remote_code)
    if base:
        raise UsageError(f"--base needs a run directory or an adapter directory (they name their base model); {target} is a model")
    if folder is not None:
        if not folder.is_dir():
            raise UsageError(f"{target}: not a directory; give a run directory, a model directory or a hub ID")
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"{target}: no model here (no config.json, adapter_config.json or recipe.resolved.toml); "
                "give a run directory, a model directory or a hub ID"
            )
        check_remote_code(folder, trust_remote_code)
    model, tokenizer = _load(target, trust_remote_code)
    return [ChatModel("model", model, tokenizer, model_rendering(tokenizer), target)]


def _load_run(folder: Path, variant: str | None, base: bool, trust_remote_code: bool) -> list[ChatModel]:
    recipe, metrics = read_run(folder)
    section = model_section(recipe, folder, trust_remote_code)
    adapter = folder / "adapter"
    seed = int(recipe.get("seed", 0))
    models: list[ChatModel] = []
    if variant:
        quantized = folder / "quantized"
        found = sorted(p.name for p in quantized.iterdir() if (p / "config.json").is_file()) if quantized.is_dir() else []
        if variant not in found:
            what = f"its variants: {', '.join(found)}" if found else "it has no quantized/ exports (a `quantize` run writes them)"
            raise UsageError(f"--variant {variant}: {folder} has no quantized/{variant}; {what}")
        model, tokenizer = _load(str(quantized / variant), section.trust_remote_code, **_device_map())
        models.append(ChatModel(variant, model, tokenizer, run_rendering(recipe, metrics, tokenizer), f"{folder}/quantized/{variant}"))
    elif (adapter / "adapter_config.json").is_file():
        base_model, tokenizer = _load(section, section.trust_remote_code, seed=seed)
        model = _with_adapter(base_model, adapter)
        rendering = run_rendering(recipe, metrics, tokenizer)
        models.append(ChatModel("trained", model, tokenizer, rendering, f"{section.name} + adapter {adapter} (not merged)"))
        if base:
            models.append(ChatModel("base", model, tokenizer, rendering, f"{section.name} (adapter off)", adapter_off=True))
            return models
    elif (folder / "model" / "config.json").is_file():
        check_remote_code(folder / "model", section.trust_remote_code)
        model, tokenizer = _load(str(folder / "model"), section.trust_remote_code)
        models.append(ChatModel("trained", model, tokenizer, run_rendering(recipe, metrics, tokenizer), f"{folder}/model"))
    else:
        raise UsageError(f"{folder}: the run exported no model (no model/, adapter/ or quantized/); has it finished?")
    if base:
        base_model, tokenizer = _load(section, section.trust_remote_code, seed=seed)
        models.append(ChatModel("base", base_model, tokenizer, run_rendering(recipe, metrics, tokenizer), section.name))
    return models


def _load_adapter_dir(folder: Path, base: bool, trust_remote_code: bool) -> list[ChatModel]:
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{folder}/adapter_config.json names no base model (base_model_name_or_path)") from None
    base_model, tokenizer = _load(str(base_name), trust_remote_code)
    model = _with_adapter(base_model, folder)
    rendering = model_rendering(tokenizer)
    models = [ChatModel("trained", model, tokenizer, rendering, f"{base_name} + adapter {folder} (not merged)")]
    if base:
        models.append(ChatModel("base", model, tokenizer, rendering, f"{base_name} (adapter off)", adapter_off=True))
    return models


def _device_map() -> dict[str, Any]:
    import torch

    return {"device_map": "cuda" if torch.cuda.is_available() else "cpu"}


# ------------------------------------------------------------------ answering


CHARS_PER_POSITION = 16
"""A prompt longer than this many characters per model position is refused before it is tokenized."""


def model_positions(model: Any) -> int | None:
    """How many positions (tokens) the model reads: ``max_position_embeddings`` (``n_positions``), None if it has no limit."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def check_lengths(models: list[ChatModel], options: GenerationOptions) -> None:
    """``--max-new-tokens`` bounded by the models' positions, before anything is generated."""
    for chat in models:
        positions = model_positions(chat.model)
        if positions and options.max_new_tokens >= positions:
            raise UsageError(
                f"--max-new-tokens {options.max_new_tokens:,}: {chat.description} reads at most {positions:,} positions, "
                f"prompt included; give at most {positions - 1:,}"
            )


def prepare(chat: ChatModel, message: str, options: GenerationOptions) -> tuple[Any, int]:
    """The tokenized prompt and how many tokens may follow it: refused (one line) past the model's positions."""
    tokenizer, model = chat.tokenizer, chat.model
    prompt = chat.rendering.prompt(tokenizer, chat.history, message)
    positions = model_positions(model)
    if positions and len(prompt) > positions * CHARS_PER_POSITION:  # before tokenizing: a 5 MB line costs nothing
        raise UsageError(
            f"the prompt holds {len(prompt):,} characters, far more than the model's {positions:,} positions can read; "
            f"shorten it{' or /reset the conversation' if chat.history else ''}"
        )
    inputs = tokenizer(prompt, return_tensors="pt", verbose=False).to(next(model.parameters()).device)
    length = int(inputs["input_ids"].shape[1])
    max_new_tokens = options.max_new_tokens
    if positions:
        if length >= positions:
            raise UsageError(
                f"the prompt is {length:,} tokens and the model reads at most {positions:,} positions (its prompt budget is "
                f"{positions - 1:,} tokens with one left to answer); shorten it{' or /reset the conversation' if chat.history else ''}"
            )
        if length + max_new_tokens > positions:
            max_new_tokens = positions - length
            log.info("--max-new-tokens: %d left of the model's %d positions after a %d-token prompt", max_new_tokens, positions, length)
    return inputs, max_new_tokens


def answer(chat: ChatModel, message: str, options: GenerationOptions, on_text: Callable[[str], None] | None = None,
           prepared: tuple[Any, int] | None = None) -> tuple[str, int]:
    """The model's reply to ``message`` after its history (streamed to ``on_text`` as it is decoded); ``(text, new tokens)``."""
    import contextlib

    import torch
    from transformers import TextStreamer, set_seed

    tokenizer, model = chat.tokenizer, chat.model
    inputs, max_new_tokens = prepared or prepare(chat, message, options)
    eos = model.generation_config.eos_token_id
    sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if options.temperature > 0:
        sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p, "top_k": None}
    streamer = None
    if on_text is not None:

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                on_text(text)

        streamer = Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    set_seed(options.seed)
    switch = model.disable_adapter() if chat.adapter_off else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with switch, torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos if eos is not None else tokenizer.eos_token_id, streamer=streamer, **sampling,
            )
    finally:
        model.train(was_training)
    generated = output[0, inputs["input_ids"].shape[1] :].tolist()
    stop = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    length = next((j + 1 for j, t in enumerate(generated) if t in stop), len(generated))
    text = tokenizer.decode(generated[:length], skip_special_tokens=True).strip()
    if chat.rendering.multi_turn:
        chat.history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
    return text, length


def one_shot(models: list[ChatModel], prompts: list[str], options: GenerationOptions, as_json: bool, console: Any) -> None:
    """Answer each prompt on its own (no history): JSON lines with ``--json``, else streamed text."""
    for number, prompt in enumerate(prompts, 1):
        for chat in models:
            chat.history = []
        try:
            _answer_one(models, prompt, options, as_json, console)
        except UsageError as err:
            raise UsageError(f"prompt {number}: {err}") from None


def _answer_one(models: list[ChatModel], prompt: str, options: GenerationOptions, as_json: bool, console: Any) -> None:
    from rich.markup import escape

    if as_json:
        record: dict[str, Any] = {"prompt": prompt}
        for chat in models:
            text, tokens = answer(chat, prompt, options)
            prefix = "" if chat is models[0] else f"{chat.label}_"
            record |= {f"{prefix}response": text, f"{prefix}new_tokens": tokens, f"{prefix}model": chat.description}
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    shown = prompt if len(prompt) <= 2000 else f"{prompt[:1500]} …({len(prompt) - 1500:,} more characters)"
    console.print(f"[bold]>[/] {escape(shown)}", soft_wrap=True)
    for chat in models:
        _stream(chat, prompt, options, console, width=max(len(m.label) for m in models))


def _stream(chat: ChatModel, message: str, options: GenerationOptions, console: Any, width: int) -> str:
    from rich.markup import escape

    prepared = prepare(chat, message, options)  # a prompt refused before the model's label is printed
    console.print(f"[bold cyan]{escape(chat.label.ljust(width))}>[/] ", end="")
    text, _ = answer(chat, message, options, prepared=prepared, on_text=lambda piece: console.print(piece, end="", markup=False, highlight=False, soft_wrap=True))
    console.print()
    return text


def interactive(models: list[ChatModel], options: GenerationOptions, console: Any, read: Callable[[str], str] = input) -> None:
    """A conversation in the terminal: streamed answers, ``/reset`` forgets it, ``/exit`` (or Ctrl-D) ends it."""
    from rich.markup import escape

    first = models[0]
    how = {
        "chat": "the chat template, multi-turn",
        "template": "the run's prompt template, one turn at a time (trained without a chat template)",
        "plain": "the message as it is, one turn at a time (no chat template)",
    }[first.rendering.mode]
    for chat in models:
        console.print(f"[bold]{escape(chat.label)}[/]: {escape(chat.description)}", soft_wrap=True)
    console.print(f"prompts: {how}. [dim]/reset forgets the conversation, /exit quits.[/]", soft_wrap=True)
    width = max(len(m.label) for m in models)
    while True:
        try:
            message = read("you> ")
        except (EOFError, KeyboardInterrupt, RuntimeError, OSError):  # RuntimeError: input() lost a closed stdin
            console.print()
            return
        command = message.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            for chat in models:
                chat.history = []
            console.print("[dim](conversation reset)[/]")
            continue
        for chat in models:
            try:
                _stream(chat, message, options, console, width)
            except UsageError as err:  # a prompt over the model's positions: say so, keep the conversation
                console.print()
                console.print(f"[red]{escape(str(err))}[/]", soft_wrap=True)
                break
