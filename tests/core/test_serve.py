"""``ptrain serve``: transformers' OpenAI-compatible server on 127.0.0.1, answering the official ``openai`` client."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from ptrain._cli import cli
from ptrain.testing import execute, tiny_recipe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_chat_run(tmp_path_factory):
    """One SFT step on builtin:tiny-llama with the chat template, too small to teach it to stop: a finished run
    whose greedy answers run to the token limit."""
    recipe = tiny_recipe(["sft"], data={"chat": True, "num_examples": 40, "eval_size": 4}, train={"max_steps": 1, "learning_rate": 1e-7},
                         eval={"max_samples": 2, "max_new_tokens": 4})
    return execute(recipe, output_dir=tmp_path_factory.mktemp("serve") / "run")


@contextlib.contextmanager
def served(target, log):
    """``ptrain serve TARGET`` in a subprocess on a free port: ``(client, model name)`` once it answers; SIGTERM after,
    and the server must exit 0 within a minute."""
    from openai import OpenAI

    port = free_port()
    with log.open("w") as out:  # a file, not a pipe: a server blocked on a full pipe would hang the test
        server = subprocess.Popen([sys.executable, "-m", "ptrain", "serve", str(target), "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:  # the model loads before uvicorn listens
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        found = re.search(r"^model: (\S+)", log.read_text(), re.MULTILINE)
        assert found and server.poll() is None, log.read_text()
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60, max_retries=0), found.group(1)
    finally:
        server.send_signal(signal.SIGTERM)  # as a service manager stops it; Ctrl-C (SIGINT) takes the same path
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0 and log.read_text().rstrip().endswith("server stopped"), log.read_text()


QUESTION = "Reverse the word: hello"


def greedy_text(model, tokenizer, prompt, tokens=6):
    ids = tokenizer(prompt, return_tensors="pt")
    return tokenizer.decode(model.generate(**ids, max_new_tokens=tokens, do_sample=False)[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_serve_answers_the_openai_client_like_ptrain_chat_and_stops_cleanly(tiny_chat_run, tmp_path):
    from ptrain import _chat

    with served(tiny_chat_run.dir, tmp_path / "serve.log") as (client, model):
        assert [m.id for m in client.models.list()] == [model]
        messages = [{"role": "user", "content": QUESTION}]
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6)
        streamed = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=6, stream=True)
        pieces = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]
    chat = _chat.load_models(str(tiny_chat_run.dir))[0]
    expected, tokens = _chat.answer(chat, QUESTION, _chat.GenerationOptions(max_new_tokens=6))  # what `ptrain chat --json` says
    raw = greedy_text(chat.model, chat.tokenizer, chat.rendering.prompt(chat.tokenizer, [], QUESTION))  # the same tokens, unstripped
    assert tokens == 6 and raw and reply.choices[0].message.content == raw, (reply, raw)
    assert reply.choices[0].message.content.strip() == expected and reply.usage.completion_tokens == tokens
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == raw, pieces


@pytest.mark.slow
def test_serve_a_gguf_file(tiny_chat_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptrain_methods.gguf.convert import write_gguf

    source = tiny_chat_run.dir / "model"
    tokenizer = AutoTokenizer.from_pretrained(source)
    write_gguf(source, tmp_path / "tiny-f16.gguf", "f16", tokenizer.chat_template, "tiny")
    with served(tmp_path / "tiny-f16.gguf", tmp_path / "serve.log") as (client, model):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=6)
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny-f16.gguf")
    gguf_model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny-f16.gguf")
    prompt = loaded.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert reply.choices[0].message.content == greedy_text(gguf_model, loaded, prompt) != ""


def test_serve_refuses_a_busy_port_and_a_bad_target_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2 and "is busy" in result.output and f"--port {port}" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing"), "--port", str(free_port())])
    assert result.exit_code == 2 and "no such directory" in result.output, result.output
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing.gguf"), "--port", str(free_port())])
    assert result.exit_code == 2 and "no such GGUF file" in result.output, result.output
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "127.0.0.1" in result.output, result.output


def test_a_prompt_template_run_is_served_with_its_template():
    from transformers import AutoTokenizer

    from ptrain._models import model_location
    from ptrain._serve import template_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model_location("builtin:tiny-llama"))
    tokenizer.chat_template = template_chat_template('Q: {instruction}\n"A":')
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "2 {{ }}"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == 'Q: 2 {{ }}\n"A":'
