"""Knowledge distillation: a frozen teacher trains the recipe's model (the student).

Which loss is possible depends on the pair of tokenizers, so the mode is chosen from them:

* ``logit`` (same vocabulary): ``α·T²·D(teacher‖student at T) + (1−α)·CE`` on completion tokens,
  with D forward KL, reverse KL or generalized JSD;
* ``sequence`` (any pair; the default when vocabularies differ): the teacher answers the training
  prompts, the student learns the teacher's text with plain cross-entropy;
* ``uld`` (any pair): Universal Logit Distillation, an L1 distance between the two models'
  *sorted* next-token distributions on aligned completion positions, plus CE.

Labels are often scarce: ``labeled = N`` keeps the labels of the first N training rows and turns
the rest into prompts only the teacher answers (its answers are cached in the run directory, so
``--resume`` only generates what is missing). ``baseline = true`` also trains the same student
with plain SFT on the labeled rows alone, for the same steps, so the benefit is measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ptrain import LoadedModel, RecipeError, Run, UsageError, hookimpl

STATE = "distill"
CACHE = "teacher_completions.jsonl"


@dataclass
class DistillSection:
    """``[distill]``: the teacher and how it teaches (optimisation settings live in ``[train]``)."""

    teacher: str
    """A hub ID, a local model directory, a previous ptrain run directory (its ``model/``) or ``builtin:NAME``."""
    teacher_load_in: Literal["none", "8bit", "4bit"] = "none"
    """Load the teacher quantized with bitsandbytes to save memory (it is only run forward)."""
    mode: Literal["auto", "logit", "sequence", "uld"] = "auto"
    """``auto``: ``logit`` when the tokenizers share one vocabulary, else ``sequence``."""
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the distillation term; ``1 − alpha`` weighs cross-entropy on the completion."""
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = 0.5
    """Mixture weight of the teacher in generalized JSD (``divergence = "jsd"``)."""
    labeled: int = -1
    """Training rows that keep their labels (the first N); the others become teacher-answered prompts. -1: all."""
    teacher_answers: Literal["unlabeled", "all"] = "unlabeled"
    """``all`` also replaces the labels of labeled rows by the teacher's answers (classic sequence-level KD)."""
    max_new_tokens: int | None = None
    """Length of teacher answers; default ``eval.max_new_tokens``."""
    baseline: bool = False
    """Also train the same student with plain SFT on the labeled rows alone, same steps, and report both."""

    def validate(self) -> None:
        if not self.teacher.strip():
            raise RecipeError("must name a teacher model (hub ID, directory, run directory or builtin:NAME)", key="teacher")
        if self.teacher.startswith("builtin:"):
            from ptrain import models

            known = {*models.BUILTIN_MODELS, *getattr(models, "PRETRAINED_OFFLINE", {})}
            if self.teacher.removeprefix("builtin:") not in known:
                raise RecipeError(
                    f"unknown builtin model {self.teacher!r}; available: {', '.join('builtin:' + m for m in sorted(known))}",
                    key="teacher",
                )
        elif self.teacher.startswith((".", "/", "~")) and not Path(self.teacher).expanduser().is_dir():
            raise RecipeError(f"teacher directory {self.teacher!r} not found; give an existing directory or a hub ID", key="teacher")
        if self.temperature <= 0:
            raise RecipeError("must be > 0", key="temperature")
        if not 0 <= self.alpha <= 1:
            raise RecipeError("must be in [0, 1]", key="alpha")
        if not 0 < self.beta < 1:
            raise RecipeError("must be in (0, 1); use divergence = 'forward_kl' or 'reverse_kl' for the end points", key="beta")
        if self.labeled < -1:
            raise RecipeError("must be a number of rows >= 0, or -1 for all", key="labeled")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RecipeError("must be >= 1", key="max_new_tokens")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"distill": DistillSection}


# ---------------------------------------------------------------- losses (pure functions)


def kd_divergence(student_logits: Any, teacher_logits: Any, temperature: float, divergence: str = "forward_kl", beta: float = 0.5) -> Any:
    """Per-position divergence between teacher and student distributions at ``temperature``.

    Both inputs are ``[N, V]`` logits over one vocabulary; softmax runs in fp32. ``forward_kl`` is
    KL(teacher‖student), ``reverse_kl`` KL(student‖teacher), ``jsd`` the generalized JSD
    ``β·KL(t‖m) + (1−β)·KL(s‖m)`` with ``m = β·t + (1−β)·s``. Returns ``[N]``.
    """
    import math

    import torch

    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if divergence == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if divergence == "jsd":
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown divergence {divergence!r}")


def logit_kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    temperature: float = 2.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> tuple[Any, Any, Any]:
    """``α·T²·D + (1−α)·CE`` averaged over completion tokens; returns ``(loss, kd, ce)``.

    The two parts come back detached, for logging. ``student_logits`` ``[B, L, Vs]`` and ``teacher_logits`` ``[B, L, Vt]`` come from the same
    input ids; ``labels`` ``[B, L]`` hold ``-100`` on prompt and padding (the mask comes from the
    labels, never from the pad id). Position ``i`` predicts token ``i + 1``. When the vocabulary
    sizes differ (padded embeddings within one family) the divergence uses the shared first
    ``min(Vs, Vt)`` entries; CE uses the student's full vocabulary.
    """
    import torch

    targets = labels[:, 1:]
    mask = targets != -100
    student = student_logits[:, :-1][mask]
    teacher = teacher_logits[:, :-1][mask]
    if student.shape[0] == 0:
        zero = student_logits.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    ce = torch.nn.functional.cross_entropy(student.float(), targets[mask])
    shared = min(student.shape[-1], teacher.shape[-1])
    kd = kd_divergence(student[:, :shared], teacher[:, :shared], temperature, divergence, beta).mean()
    return alpha * temperature**2 * kd + (1 - alpha) * ce, kd.detach(), ce.detach()


def uld_loss(student_logits: Any, teacher_logits: Any, temperature: float = 1.0) -> Any:
    """Universal Logit Distillation (Boizard et al., 2024) for tokenizers with different vocabularies.

    ``student_logits`` ``[Ns, Vs]`` and ``teacher_logits`` ``[Nt, Vt]`` are the logits at the
    completion positions of one example in each tokenization; the first ``min(Ns, Nt)`` positions are
    aligned. Each distribution is sorted (so no token mapping is needed), the shorter vocabulary is
    padded with zeros, and the loss is the L1 distance per position (the 1-D Wasserstein distance
    between sorted distributions), summed over the vocabulary. Returns ``[min(Ns, Nt)]``.
    """
    import torch

    n = min(student_logits.shape[0], teacher_logits.shape[0])
    s = torch.softmax(student_logits[:n].float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    t = torch.softmax(teacher_logits[:n].float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s = torch.nn.functional.pad(s, (0, width - s.shape[-1]))
    t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1)


# ---------------------------------------------------------------- teacher


def teacher_location(name: str) -> str:
    """Where ``from_pretrained`` reads the teacher; a ptrain run directory means its ``model/``."""
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return str(path / "model")
    return name


def load_teacher(run: Run) -> tuple[Any, Any]:
    from ptrain.config import ModelSection
    from ptrain.models import load_model

    section: DistillSection = run.section("distill")
    extra: dict[str, Any] = {}
    if section.teacher_load_in != "none":
        import torch
        from transformers import BitsAndBytesConfig

        if section.teacher_load_in == "8bit":
            extra["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
            )
    student = run.recipe.model
    spec = ModelSection(
        name=teacher_location(section.teacher),
        dtype=student.dtype,
        attn_implementation=student.attn_implementation,
        trust_remote_code=student.trust_remote_code,
    )
    try:
        teacher, tokenizer = load_model(spec, run.recipe.seed, extra)
    except UsageError as err:
        raise UsageError(str(err).replace("model.name", "distill.teacher", 1)) from err
    teacher.requires_grad_(False)
    teacher.eval()
    if section.teacher_load_in == "4bit":
        from ptrain.bnb import keep_off_packed_path

        keep_off_packed_path(teacher, training=False)
    return teacher, tokenizer


def same_vocabulary(a: Any, b: Any) -> bool:
    """True when both tokenizers map every token string to the same id (sizes alone are not enough)."""
    return a.get_vocab() == b.get_vocab()


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    loaded = yield
    if run.state.get(f"{STATE}.loading_baseline"):
        return loaded
    section: DistillSection = run.section("distill")
    teacher, teacher_tokenizer = load_teacher(run)
    same = same_vocabulary(teacher_tokenizer, loaded.tokenizer)
    mode = section.mode
    if mode == "auto":
        mode = "logit" if same else "sequence"
        if not same:
            run.log.info(
                "distill: teacher and student tokenizers have different vocabularies (%d vs %d tokens): "
                "cross-tokenizer distillation, mode 'sequence' (the student learns the teacher's answers)",
                len(teacher_tokenizer), len(loaded.tokenizer),
            )
    elif mode == "logit" and not same:
        raise RecipeError(
            "mode 'logit' needs teacher and student with one vocabulary, and these tokenizers differ; "
            "use mode = 'sequence' or 'uld' (or 'auto')",
            key="distill.mode",
        )
    run.log.info("distill: teacher %s (%s parameters), mode %s", section.teacher, f"{_parameters(teacher):,}", mode)
    run.state[STATE] = {"teacher": teacher, "teacher_tokenizer": teacher_tokenizer, "mode": mode, "same_vocabulary": same}
    return LoadedModel(loaded.model, loaded.tokenizer)


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- data: labeled rows and teacher answers


def teacher_answers(run: Run, prompts: list[str]) -> dict[str, str]:
    """The teacher's greedy answers to ``prompts``, cached in ``distill/teacher_completions.jsonl``.

    The cache is appended to batch by batch, so a rerun (``--resume``) only generates the prompts
    that have no answer yet.
    """
    from ptrain.evaluation import generate

    state = run.state[STATE]
    section: DistillSection = run.section("distill")
    path = run.dir / "distill" / CACHE
    cache: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                cache[row["prompt"]] = row["completion"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interruption: its prompt is generated again
    missing = list(dict.fromkeys(p for p in prompts if p not in cache))
    run.log.info("distill: %d teacher answers cached, %d to generate", len(prompts) - len(missing), len(missing))
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        batch = run.recipe.eval.batch_size
        chunk = max(batch * 4, 64)
        max_new = section.max_new_tokens or run.recipe.eval.max_new_tokens
        cut = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        with path.open("a", encoding="utf-8") as handle:
            if cut:
                handle.write("\n")  # after a line cut short, start a fresh one
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                texts = generate(state["teacher"], state["teacher_tokenizer"], part, max_new, batch).texts
                for prompt, text in zip(part, texts, strict=True):
                    cache[prompt] = text
                    handle.write(json.dumps({"prompt": prompt, "completion": text}) + "\n")
                handle.flush()
    return {p: cache[p] for p in prompts}


@hookimpl(wrapper=True)
def prepare_data(run: Run) -> Any:
    splits = yield
    from ptrain import DataSplits
    from ptrain.data import to_dataset

    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    rows = list(splits.train)
    n_labeled = len(rows) if section.labeled == -1 else min(section.labeled, len(rows))
    labeled, unlabeled = rows[:n_labeled], rows[n_labeled:]
    to_answer = rows if section.teacher_answers == "all" else unlabeled
    if not to_answer and state["mode"] == "sequence":
        run.log.warning(
            "distill: every training row keeps its label, so sequence-level KD is plain SFT; "
            "set distill.labeled = N or distill.teacher_answers = 'all'"
        )
    answers = teacher_answers(run, [r["prompt"] for r in to_answer]) if to_answer else {}
    answered = {id(r) for r in to_answer}
    train, empty = [], 0
    for row in rows:
        if id(row) in answered:
            text = answers[row["prompt"]]
            if not text.strip():
                empty += 1
                continue
            row = {**row, "completion": text, "output": text}
        train.append(row)
    if empty:
        run.log.info("distill: %d teacher answers were empty and are left out", empty)
    state.update(labeled_rows=labeled, labeled_count=len(labeled), teacher_answered=len(to_answer) - empty)
    run.log.info(
        "distill: %d labeled rows, %d prompts answered by the teacher, %d training rows",
        len(labeled), len(to_answer) - empty, len(train),
    )
    return DataSplits(to_dataset(train), splits.eval)


# ---------------------------------------------------------------- trainer


def distill_trainer_class() -> type:
    """An ``SFTTrainer`` whose loss adds the teacher's logits (modes ``logit`` and ``uld``)."""
    import torch
    from trl import SFTTrainer

    class DistillationTrainer(SFTTrainer):
        def __init__(self, *args: Any, teacher: Any, teacher_tokenizer: Any, mode: str, section: DistillSection, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.teacher, self.teacher_tokenizer, self.mode, self.section = teacher, teacher_tokenizer, mode, section

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if self.mode == "sequence":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
            section = self.section
            if self.mode == "logit":
                with torch.no_grad():
                    teacher_logits = self.teacher(
                        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False
                    ).logits
                loss, kd, ce = logit_kd_loss(
                    outputs.logits, teacher_logits, labels, section.temperature, section.alpha, section.divergence, section.beta
                )
            else:
                loss, kd, ce = self.uld_batch(outputs.logits, inputs)
            mode = "train" if model.training else "eval"
            self._metrics[mode]["kd_loss"].append(float(kd))
            self._metrics[mode]["ce_loss"].append(float(ce))
            return (loss, outputs) if return_outputs else loss

        def uld_batch(self, student_logits: Any, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
            """ULD + CE: the batch's texts re-tokenized for the teacher, completion positions aligned."""
            labels, ids = inputs["labels"], inputs["input_ids"]
            attention = inputs.get("attention_mask")
            if attention is None:
                attention = torch.ones_like(ids)
            student_tok, teacher_tok = self.processing_class, self.teacher_tokenizer
            targets = labels[:, 1:]
            mask = targets != -100
            ce = torch.nn.functional.cross_entropy(student_logits[:, :-1][mask].float(), targets[mask]) if mask.any() else None
            sequences, student_rows = [], []
            for row in range(ids.shape[0]):
                completion = labels[row] != -100
                prompt = (attention[row] == 1) & ~completion
                prompt_text = student_tok.decode(ids[row][prompt], skip_special_tokens=True)
                completion_text = student_tok.decode(ids[row][completion], skip_special_tokens=True)
                sequences.append(completion_ids(teacher_tok, prompt_text, completion_text))
                student_rows.append(student_logits[row, :-1][mask[row]])
            width = max(len(full) for full, _ in sequences)
            pad = teacher_tok.pad_token_id or 0
            teacher_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
            teacher_mask = torch.zeros((len(sequences), width), dtype=torch.long)
            for row, (full, _) in enumerate(sequences):
                teacher_ids[row, : len(full)] = torch.tensor(full)
                teacher_mask[row, : len(full)] = 1
            device = next(self.teacher.parameters()).device
            with torch.no_grad():
                teacher_logits = self.teacher(
                    input_ids=teacher_ids.to(device), attention_mask=teacher_mask.to(device), use_cache=False
                ).logits
            per_token = [
                uld_loss(student_rows[row], teacher_logits[row, start - 1 : len(full) - 1].to(student_logits.device), self.section.temperature)
                for row, (full, start) in enumerate(sequences)
            ]
            uld = torch.cat(per_token).mean() if per_token else student_logits.sum() * 0.0
            if ce is None:
                return uld * self.section.alpha, uld.detach(), uld.detach() * 0
            return self.section.alpha * uld + (1 - self.section.alpha) * ce, uld.detach(), ce.detach()

    return DistillationTrainer


def completion_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """``(ids of prompt + completion + EOS, index of the first completion token)`` in ``tokenizer``."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full, strict=False)) if a != b), min(len(prompt_ids), len(full)))
    return full, max(start, 1)


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import SFTConfig

    from ptrain.training import training_arguments

    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    device = next(run.model.parameters()).device
    if next(state["teacher"].parameters()).device != device and not getattr(state["teacher"], "is_loaded_in_4bit", False) and not getattr(
        state["teacher"], "is_loaded_in_8bit", False
    ):
        state["teacher"].to(device)
    if section.baseline:
        # trained (and measured) here, before the student: outside the core's evaluation spinner
        model, tokenizer = train_baseline(run)
        state["baseline"] = measure(run, model, tokenizer)
        del model
    args = training_arguments(
        run, SFTConfig, completion_only_loss=True, max_length=run.recipe.train.max_length, dataset_num_proc=None
    )
    columns = ["prompt", "completion"]
    evaluation = run.eval_dataset.select_columns(columns) if run.recipe.train.eval_steps else None
    trainer_class = distill_trainer_class()
    return trainer_class(
        model=run.model,
        args=args,
        train_dataset=run.train_dataset.select_columns(columns),
        eval_dataset=evaluation,
        processing_class=run.tokenizer,
        teacher=state["teacher"],
        teacher_tokenizer=state["teacher_tokenizer"],
        mode=state["mode"],
        section=section,
    )


# ---------------------------------------------------------------- baseline and report


def train_baseline(run: Run) -> tuple[Any, Any]:
    """The same student, loaded afresh, trained with plain SFT on the labeled rows alone, same steps."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from ptrain.data import to_dataset
    from ptrain.training import progress_callback, training_arguments

    state = run.state[STATE]
    labeled = state["labeled_rows"]
    if not labeled:
        raise UsageError("distill.baseline = true needs labeled rows to train on; set distill.labeled > 0")
    set_seed(run.recipe.seed)
    run.state[f"{STATE}.loading_baseline"] = True
    try:
        model, tokenizer = run.hook.load_model(run=run)
    finally:
        run.state.pop(f"{STATE}.loading_baseline")
    args = training_arguments(
        run,
        SFTConfig,
        output_dir=str(run.dir / "distill" / "baseline"),
        completion_only_loss=True,
        max_length=run.recipe.train.max_length,
        dataset_num_proc=None,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=to_dataset(labeled).select_columns(["prompt", "completion"]), processing_class=tokenizer
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(run.console))
    run.log.info("distill: training the baseline (plain SFT on %d labeled rows, %d steps)", len(labeled), args.max_steps)
    trainer.train()
    return model, tokenizer


def measure(run: Run, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The numbers compared between teacher, student and baseline, measured the same way for each."""
    import torch

    from ptrain.evaluation import completion_loss, generate, task_scores

    section = run.recipe.eval
    rows = list(run.eval_dataset)
    sample = rows[: section.max_samples]
    loss = completion_loss(
        model, tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], section.batch_size, run.recipe.train.max_length
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    generations = generate(model, tokenizer, [r["prompt"] for r in sample], section.max_new_tokens, section.batch_size)
    scores = task_scores(sample, generations.texts, section.metric)
    return {
        "parameters": _parameters(model),
        "memory_footprint_mb": round(model.get_memory_footprint() / 2**20, 3),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "generation_tokens_per_s": round(generations.tokens_per_second, 1),
        "task_metric": round(sum(scores) / len(scores), 4) if scores else None,
        "eval_loss": round(loss, 6),
    }


def weights_size_mb(location: str | None) -> float | None:
    """Size on disk of the weight files in a model directory (None for a hub ID not stored locally)."""
    if not location or not Path(location).is_dir():
        return None
    files = [p for p in Path(location).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
    return round(sum(p.stat().st_size for p in files) / 2**20, 3) if files else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


@hookimpl(wrapper=True)
def evaluate(run: Run, stage: str) -> Any:
    results = yield
    if stage != "final" or not run.eval_dataset or not len(run.eval_dataset):
        return results
    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    teacher = measure(run, state["teacher"], state["teacher_tokenizer"])
    teacher["size_on_disk_mb"] = weights_size_mb(teacher_location(section.teacher)) or weights_size_mb(
        getattr(state["teacher"], "name_or_path", None)
    )
    student = measure(run, run.model, run.tokenizer)  # measured right after the teacher: speeds compare fairly
    report: dict[str, Any] = {
        "mode": state["mode"],
        "same_vocabulary": state["same_vocabulary"],
        "teacher_name": section.teacher,
        "labeled_rows": state["labeled_count"],
        "teacher_answered_rows": state["teacher_answered"],
        "teacher": teacher,
        "student": student,
        "quality_ratio": ratio(student["task_metric"], teacher["task_metric"]),
        "speedup": ratio(student["generation_tokens_per_s"], teacher["generation_tokens_per_s"]),
    }
    if "baseline" in state:
        report["baseline"] = state["baseline"]
        report["baseline_quality_ratio"] = ratio(report["baseline"]["task_metric"], teacher["task_metric"])
    run.metrics[STATE] = report
    return results


@hookimpl(wrapper=True)
def export(run: Run) -> Any:
    written = yield
    report = run.metrics.get(STATE)
    if report:
        report["student"]["size_on_disk_mb"] = weights_size_mb(run.artifacts.get("model"))
        print_report(run, report)
    return written


def print_report(run: Run, report: dict[str, Any]) -> None:
    """Teacher, student (and baseline) side by side, in the log and on the console."""
    columns = ["teacher", "student"] + (["baseline"] if "baseline" in report else [])
    keys = ["parameters", "size_on_disk_mb", "memory_footprint_mb", "peak_memory_mb", "generation_tokens_per_s", "task_metric", "eval_loss"]
    lines = [f"distillation ({report['mode']}): " + ", ".join(
        f"{k} {report[k]}" for k in ("quality_ratio", "speedup", "baseline_quality_ratio") if k in report
    )]
    for key in keys:
        lines.append(f"  {key:<24}" + "".join(f"{str(report[c].get(key)):>16}" for c in columns))
    run.log.info("%s", "\n".join(lines))
    if run.console is None or not run.is_main_process:
        return
    from rich.table import Table

    table = Table(title=lines[0])
    table.add_column("metric")
    for column in columns:
        table.add_column(column, justify="right")
    for key in keys:
        table.add_row(key, *[f"{report[c][key]:.4g}" if isinstance(report[c].get(key), float) else str(report[c].get(key)) for c in columns])
    run.console.print(table)
