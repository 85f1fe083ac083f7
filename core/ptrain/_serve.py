"""``ptrain serve TARGET``: an OpenAI-compatible endpoint on 127.0.0.1, built on ``transformers serve``.

TARGET is what ``ptrain chat`` takes (a run directory, a model or adapter directory, a hub ID,
``builtin:NAME``) or a ``.gguf`` file. transformers' server (FastAPI + uvicorn, the ``Serve`` class of
``transformers.cli.serve``) does the serving: chat completions, streaming, tools where the model's chat
template takes them; ptrain only hands it a directory that holds the model the way the run trained it,
pinned (``force_model``) so every request gets that model:

* a run or model directory that is already a full model with the chat template it trained with is
  served where it lies;
* an adapter (a ``lora`` run, an adapter directory) is merged into a full-precision copy first;
* a run trained with a prompt template (no chat template) gets a chat template that renders the last
  user message with the run's prompt template, so the endpoint sees what ``ptrain chat`` sees;
* a GGUF file is served from its folder (``<folder>:<file>.gguf``): transformers reads its tokenizer,
  chat template and de-quantized weights from the file.

The copy lives in a temporary directory removed when the server stops (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ptrain import _paths
from ptrain._errors import UsageError


@dataclass
class Served:
    model_id: str
    """The name clients pass as ``model`` (the server is pinned to it)."""
    description: str


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than a traceback from uvicorn after the model has loaded."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(f"--port {port}: {host}:{port} is busy ({err.strerror}); pick another port with --port") from None


def template_chat_template(template: str) -> str:
    """A chat template that renders the last user message with a prompt template such as ``"Q: {instruction}\\nA:"``."""
    prefix, _, suffix = template.partition("{instruction}")
    return ("{%- set ns = namespace(text='') -%}{%- for m in messages if m['role'] == 'user' -%}{%- set ns.text = m['content'] -%}"
            "{%- endfor -%}" + "{{ " + json.dumps(prefix) + " }}{{ ns.text }}{{ " + json.dumps(suffix) + " }}")


@contextlib.contextmanager
def prepared(target: str, trust_remote_code: bool = False) -> Iterator[Served]:
    """The directory (or ``folder:file.gguf``) to serve for ``target``; a temporary copy where one is needed."""
    from ptrain import _chat

    path = _paths.expand(target) if _paths.is_local(target) else None
    if path is not None and path.suffix == ".gguf":
        if not path.is_file():
            raise UsageError(f"{target}: no such GGUF file")
        with tempfile.TemporaryDirectory(prefix="ptrain-serve-") as tmp:
            gguf_to_directory(path, Path(tmp))
            yield Served(tmp, f"GGUF file {path} (de-quantized by transformers' GGUF reader)")
        return
    chat = _chat.load_models(target, trust_remote_code=trust_remote_code)[0]
    model, tokenizer = chat.model, chat.tokenizer
    folder = path / "model" if path is not None and (path / "model" / "config.json").is_file() else path
    adapter = hasattr(model, "merge_and_unload")
    if chat.rendering.mode == "template":
        tokenizer.chat_template = template_chat_template(chat.rendering.template)
    elif chat.rendering.mode == "plain":
        tokenizer.chat_template = template_chat_template("{instruction}")
    own = not adapter and chat.rendering.mode == "chat" and folder is not None and (folder / "config.json").is_file()
    if own or (folder is None and chat.rendering.mode == "chat"):
        yield Served(str(folder.resolve()) if folder is not None else target, chat.description)
        return
    with tempfile.TemporaryDirectory(prefix="ptrain-serve-") as tmp:
        full = model.merge_and_unload() if adapter else model
        full.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        how = {"chat": "", "template": ", prompts rendered with the run's prompt template", "plain": ", prompts as they are"}
        yield Served(tmp, chat.description.replace("(not merged)", "(merged for serving)") + how[chat.rendering.mode])


def gguf_to_directory(path: Path, directory: Path) -> None:
    """The model a GGUF file holds, de-quantized, with the tokenizer and chat template of its metadata, as a model directory.

    transformers serve takes ``<folder>:<file>.gguf`` too, but its loader picks the model class from
    ``config.architectures``, which a config read from GGUF metadata lacks (transformers 5.23), so it fails."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{path}: transformers cannot read this GGUF file ({type(err).__name__}: {first[:200]})") from None
    # the weights are plain float32 tensors now: drop the marker that makes save_pretrained refuse
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def serve(target: str, host: str, port: int, trust_remote_code: bool, announce: Callable[[Served, str, int], None]) -> None:
    """Load TARGET and serve it until interrupted."""
    from transformers.utils import is_serve_available

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"--host {host}: ptrain serves on this machine only (127.0.0.1); put a proxy in front to expose it")
    if not is_serve_available():
        raise UsageError('ptrain serve needs fastapi, uvicorn, pydantic and openai: pip install "transformers[serving]"')
    check_port(host, port)
    with prepared(target, trust_remote_code) as served:
        from transformers.cli.serve import Serve
        from transformers.cli.serving.model_manager import ModelManager

        # /v1/models lists what transformers finds in the hub cache (and fails where there is none, offline);
        # a pinned server answers only for its model, so that is what it lists
        pinned = {"id": served.model_id, "object": "model", "owned_by": "ptrain", "created": int(time.time())}
        ModelManager.get_gen_models = staticmethod(lambda cache_dir=None: [pinned])
        announce(served, host, port)
        try:
            Serve(force_model=served.model_id, host=host, port=port, device="auto", dtype="auto",
                  trust_remote_code=trust_remote_code, log_level="warning")
        except OSError as err:  # the port was taken between the check and the start
            raise UsageError(f"--port {port}: cannot serve on {host}:{port} ({err}); pick another port with --port") from None
