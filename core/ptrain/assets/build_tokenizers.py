"""Rebuild the bundled tokenizers of ``builtin:tiny-llama`` and ``builtin:tiny-gpt2``.

Run ``python -m ptrain.assets.build_tokenizers`` after changing the task generator or the
template pools. The two tokenizers differ on purpose, like the real families they imitate:
tiny-llama is a SentencePiece-style BPE (``▁`` word boundaries, ``<s>`` prepended), tiny-gpt2 a
byte-level BPE (``Ġ`` spaces, one ``<|endoftext|>`` token). Both are trained on the task text
so that tiny models learn the tasks in seconds.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ptrain.config import ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT
from ptrain.tasks import TASKS, WORDS, generate

HERE = Path(__file__).parent
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
EXTRA_TEXT = [
    "Instruction:", "Response:", "Input:", "Question:", "Answer:", "Task:", "Output:", "Q:", "A:", "User:",
    "Assistant:", "Request:", "Reply:", "Prompt:", "Result:", "Query:", "Solution:", "Below is an instruction",
    "that describes a task. Write a response that appropriately completes the request.", "system", "user", "assistant",
]


def corpus() -> list[str]:
    """Template text, instructions, task words (plain, reversed, upper case) and AVRO schemas.
    Numbers are left out, so arithmetic stays digit by digit."""
    rows = generate(list(TASKS), 6000, seed=1234)
    texts = []
    for i, row in enumerate(rows):
        instruction = TASKS[row["task"]].instructions[i % len(TASKS[row["task"]].instructions)]
        answer = row["output"] if row["task"] != "arithmetic" else ""
        inp = row["input"] if row["task"] != "arithmetic" else ""
        texts.append(ALPACA_TEMPLATE.format(instruction=instruction, input=inp) + answer)
        texts.append(ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction) + answer)
    words = [w for word in WORDS for w in (word, word[::-1], word.upper(), word.upper()[::-1])]
    return texts + EXTRA_TEXT * 50 + [" ".join(words), "\n".join(words)] * 40


def build_llama() -> None:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    special = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=special, initial_alphabet=list(string.printable.strip() + "▁"), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    save(tok, HERE / "tiny-llama", bos="<s>", eos="</s>", unk="<unk>")


def build_gpt2() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1152, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    save(tok, HERE / "tiny-gpt2", bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>")


def save(tok: Tokenizer, where: Path, **special: str) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special["bos"],
        eos_token=special["eos"],
        unk_token=special["unk"],
        model_max_length=1024,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(where)
    print(f"{where.name}: {len(fast)} tokens")


if __name__ == "__main__":
    build_llama()
    build_gpt2()
