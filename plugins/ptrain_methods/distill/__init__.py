"""Knowledge distillation: a frozen teacher trains the recipe's model (the student).

Which loss is possible depends on the pair of tokenizers, so the mode is chosen from them:

* ``logit`` (same vocabulary): ``α·T²·D(teacher‖student at T) + (1−α)·CE`` on completion tokens,
  with D forward KL, reverse KL or generalized JSD;
* ``sequence`` (any pair; the default when vocabularies differ): the teacher answers the training
  prompts, the student learns the teacher's text with plain cross-entropy;
* ``uld`` (any pair): Universal Logit Distillation, plus CE. Wherever a student token and a teacher token
  start at the same character of the completion, both models predict the next token of the same text: the
  tokens that are the same text in both vocabularies are compared directly (the divergence), the others by
  an L1 distance between their *sorted* probabilities (GOLD's hybrid; ``uld_matched = false``: sorted
  distributions alone, at positions aligned by index, as in the ULD paper).

``on_policy = true`` (GKD, Agarwal et al. 2024) changes what those losses are computed on: for a
share ``lmbda`` of the batches the student samples its own completions of the batch's prompts and
learns the teacher's distribution on *its* tokens, so it is corrected where it actually goes wrong
rather than only on text it would never write. Same vocabulary: the ``logit`` loss (``divergence``
forward/reverse KL or generalized JSD with ``beta``); different tokenizers: ``uld`` on the student's
samples re-tokenized for the teacher (as TRL's GOLD does). Samples it learned from are kept in
``distill/on_policy_samples.jsonl``.

Labels are often scarce: ``labeled = N`` keeps the labels of the first N training rows and turns
the rest into prompts only the teacher answers (its answers are cached in the run directory, so
``--resume`` only generates what is missing). ``baseline = true`` also trains the same student
with plain SFT on the labeled rows alone, for the same steps, so the benefit is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import (
    DataSplits,
    LoadedModel,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    UsageError,
    check_model_name,
    hookimpl,
    model_facts,
    model_location,
    to_dataset,
    training_arguments,
)

from .report import measure, parameters, ratio, record, weights_size_mb
from .teacher import CACHE, load_teacher, same_vocabulary, teacher_answers
from .trainer import SAMPLES, distill_trainer_class, train_baseline

STATE = "distill"
__all__ = ["CACHE", "SAMPLES", "STATE", "DistillSection", "load_teacher", "same_vocabulary", "teacher_answers"]


@dataclass
class DistillSection:
    """``[distill]``: the teacher and how it teaches (optimisation settings live in ``[train]``)."""

    teacher: str
    """A hub ID, a local model directory, a previous ptrain run directory (its ``model/``) or ``builtin:NAME``."""
    teacher_load_in: Literal["none", "8bit", "4bit"] = "none"
    """Load the teacher quantized with bitsandbytes to save memory (it is only run forward)."""
    mode: Literal["auto", "logit", "sequence", "uld"] = "auto"
    """``auto``: ``logit`` when the tokenizers share one vocabulary, else ``sequence`` (``uld`` when on-policy)."""
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the distillation term; ``1 − alpha`` weighs cross-entropy on the completion."""
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = 0.5
    """Mixture weight of the teacher in generalized JSD (``divergence = "jsd"``)."""
    uld_matched: bool = True
    """ULD (mode ``uld``): compare the tokens that are the same text in both vocabularies directly, at the characters
    where both tokenizations start a token, and only the others as sorted distributions (GOLD's hybrid); false: the
    original ULD, sorted distributions at positions aligned by index (it cannot tell which token is which)."""
    labeled: int = -1
    """Training rows that keep their labels (the first N); the others become teacher-answered prompts. -1: all."""
    teacher_answers: Literal["unlabeled", "all"] = "unlabeled"
    """``all`` also replaces the labels of labeled rows by the teacher's answers (classic sequence-level KD)."""
    max_new_tokens: int | None = None
    """Length of teacher answers and of the student's on-policy samples; default ``eval.max_new_tokens``."""
    baseline: bool = False
    """Also train the same student with plain SFT on the labeled rows alone, same steps, and report both."""
    on_policy: bool = False
    """GKD: the student samples completions of the batch's prompts and learns the teacher's distribution on them."""
    lmbda: float | None = None
    """Share of batches (on-policy only) on the student's own samples; the rest use the dataset's (or teacher's) text. Default 1."""
    sample_temperature: float | None = None
    """Temperature of the student's on-policy sampling (on-policy only). Default 1: its own distribution."""

    def validate(self) -> None:
        if not self.teacher.strip():
            raise RecipeError("must name a teacher model (hub ID, directory, run directory or builtin:NAME)", key="teacher")
        check_model_name(self.teacher, "teacher")
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
        for key in ("lmbda", "sample_temperature"):
            if getattr(self, key) is not None and not self.on_policy:
                raise RecipeError("only applies to on-policy distillation; set distill.on_policy = true or remove it", key=key)
        if self.lmbda is not None and not 0 <= self.lmbda <= 1:
            raise RecipeError("must be in [0, 1] (the share of batches on the student's samples)", key="lmbda")
        if self.sample_temperature is not None and self.sample_temperature <= 0:
            raise RecipeError("must be > 0 (sampling at temperature 1 follows the student's own distribution)", key="sample_temperature")
        if self.on_policy and self.mode == "sequence":
            raise RecipeError(
                "on-policy distillation scores the student's samples with the teacher's logits, which mode 'sequence' "
                "does not use; set mode = 'auto', 'logit' or 'uld', or on_policy = false",
                key="on_policy",
            )

    @property
    def on_policy_share(self) -> float:
        """The share of batches on the student's own samples: ``lmbda`` (default 1) when on-policy, else 0."""
        if not self.on_policy:
            return 0.0
        return 1.0 if self.lmbda is None else self.lmbda


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"distill": DistillSection}


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """The frozen teacher stays in memory while the student trains; logit and ULD modes also run it forward every step."""
    section: DistillSection = plan.recipe.section("distill")
    teacher = model_facts(section.teacher, required=False)
    if teacher is None:
        plan.add("teacher (unknown before loading)", 0.0, "weights", f"{section.teacher}: cannot know before loading", method="distill")
        return
    bits = {"none": None, "8bit": 8, "4bit": 4}[section.teacher_load_in]
    plan.add("teacher weights", plan.model_bytes(teacher, bits) / 2**20, "weights", f"{teacher.total_parameters:,} parameters", method="distill")
    same = teacher.vocab_size == plan.facts.vocab_size
    if section.mode in ("logit", "uld") or (section.mode == "auto" and (same or section.on_policy)):
        plan.add("teacher forward", plan.forward_mib(teacher), "activations_and_other", "one layer and the teacher's logits, no gradients", method="distill")


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    if recipe.section("distill").baseline and recipe.distributed.backend == "fsdp":
        raise RecipeError(
            "the baseline is trained and measured on every process, and FSDP leaves each with a shard of it; "
            "with backend = 'fsdp' set baseline = false (or use backend = 'ddp')",
            key="distill.baseline",
        )
    if recipe.section("distill").on_policy and recipe.distributed.backend == "fsdp":
        raise RecipeError(
            "on-policy distillation samples from the student, and FSDP leaves each process with a shard of it; "
            "with backend = 'fsdp' set on_policy = false (or use backend = 'ddp')",
            key="distill.on_policy",
        )
    if recipe.data.streaming:
        raise RecipeError("distill has the teacher answer the training prompts before training, which needs them all in memory; remove data.streaming", key="data.streaming")
    fields = recipe.data_fields
    if fields is not None and "instruction" not in fields:
        raise RecipeError(
            f"distill teaches on prompts, and format {recipe.data_format!r} has none; use prompt/completion, alpaca, "
            "messages or builtin:tasks data",
            key="data.format",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("distillation mode", "distill.mode"),
        ReportRow("student / teacher task metric", "distill.quality_ratio"),
        ReportRow("student / teacher tokens/s", "distill.speedup"),
        ReportRow("baseline / teacher task metric", "distill.baseline_quality_ratio"),
    ]


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    loaded = yield
    section: DistillSection = run.section("distill")
    teacher, teacher_tokenizer = load_teacher(run)
    same = same_vocabulary(teacher_tokenizer, loaded.tokenizer)
    mode = section.mode
    if mode == "auto":
        # on-policy needs the teacher's logits on the student's tokens: ULD across tokenizers
        mode = "logit" if same else "uld" if section.on_policy else "sequence"
        if not same:
            run.log.info(
                "distill: teacher and student tokenizers have different vocabularies (%d vs %d tokens): "
                "cross-tokenizer distillation, mode %r (%s)",
                len(teacher_tokenizer), len(loaded.tokenizer), mode,
                "the teacher's logits re-aligned to the student's samples" if section.on_policy
                else "the student learns the teacher's answers",
            )
    elif mode == "logit" and not same:
        raise RecipeError(
            "mode 'logit' needs teacher and student with one vocabulary, and these tokenizers differ; "
            "use mode = 'sequence' or 'uld' (or 'auto')",
            key="distill.mode",
        )
    run.log.info("distill: teacher %s (%s parameters), mode %s", section.teacher, f"{parameters(teacher):,}", mode)
    if section.on_policy:
        run.log.info(
            "distill: on-policy, the student samples completions for %.0f%% of batches (up to %d new tokens at "
            "temperature %g) and learns the teacher's distribution on them; samples kept in distill/%s",
            100 * section.on_policy_share, section.max_new_tokens or run.recipe.eval.max_new_tokens,
            section.sample_temperature or 1.0, SAMPLES,
        )
    if section.on_policy and mode == "uld" and section.on_policy_share == 1:
        run.log.warning(
            "distill: ULD compares sorted distributions, blind to which token is which, and with lmbda = 1 no batch "
            "shows the student the labels or the teacher's text; keep distill.lmbda < 1 so they anchor it"
        )
    run.state[STATE] = {"teacher": teacher, "teacher_tokenizer": teacher_tokenizer, "mode": mode, "same_vocabulary": same}
    return LoadedModel(loaded.model, loaded.tokenizer)


@hookimpl(wrapper=True)
def prepare_data(run: Run) -> Any:
    splits = yield
    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    rows = list(splits.train)
    n_labeled = len(rows) if section.labeled == -1 else min(section.labeled, len(rows))
    labeled, unlabeled = rows[:n_labeled], rows[n_labeled:]
    to_answer = rows if section.teacher_answers == "all" else unlabeled
    if section.on_policy_share == 1 and to_answer:
        # every batch is the student's own samples: the unlabeled rows are prompts only and the teacher writes nothing
        unanswered = {id(r) for r in to_answer}
        train = [{**r, "completion": "", "output": ""} if id(r) in unanswered else r for r in rows]
        state.update(labeled_rows=labeled, labeled_count=len(labeled), teacher_answered=0)
        run.log.info("distill: %d labeled rows, %d prompts for the student's on-policy samples only", len(labeled), len(to_answer))
        return DataSplits(to_dataset(train), splits.eval)
    if not to_answer and state["mode"] == "sequence":
        run.log.warning(
            "distill: every training row keeps its label, so sequence-level KD is plain SFT; "
            "set distill.labeled = N or distill.teacher_answers = 'all'"
        )
    prompts = [r["prompt"] for r in to_answer]
    answers = teacher_answers(run, state["teacher"], state["teacher_tokenizer"], prompts) if to_answer else {}
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


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import SFTConfig

    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    teacher = state["teacher"]
    device = next(run.model.parameters()).device
    quantized = getattr(teacher, "is_loaded_in_4bit", False) or getattr(teacher, "is_loaded_in_8bit", False)
    if next(teacher.parameters()).device != device and not quantized:
        teacher.to(device)
    if section.baseline:
        if not state["labeled_rows"]:
            raise UsageError("distill.baseline = true needs labeled rows to train on; set distill.labeled > 0")
        # trained (and measured) here, before the student: from the same starting weights
        model = train_baseline(run, state["labeled_rows"])
        state["baseline"] = measure(run, model, run.tokenizer)
        del model
    args = training_arguments(
        run, SFTConfig, completion_only_loss=True, max_length=run.recipe.train.max_length, dataset_num_proc=None
    )
    columns = ["prompt", "completion"]
    evaluation = run.eval_dataset.select_columns(columns) if run.recipe.train.eval_steps else None
    trainer = distill_trainer_class()(
        model=run.model,
        args=args,
        train_dataset=run.train_dataset.select_columns(columns),
        eval_dataset=evaluation,
        processing_class=run.tokenizer,
        teacher=teacher,
        teacher_tokenizer=state["teacher_tokenizer"],
        mode=state["mode"],
        section=section,
        samples_path=run.dir / "distill" / SAMPLES if run.is_main_process else None,
        max_new_tokens=section.max_new_tokens or run.recipe.eval.max_new_tokens,
        max_length=run.recipe.train.max_length,
        # FSDP shards the output head, which the chunked path does not gather: full logits there
        chunked=run.recipe.train.loss_chunk_tokens
        if run.recipe.train.chunked_loss and run.recipe.distributed.backend != "fsdp" else None,
    )
    state["trainer"] = trainer
    return trainer


@hookimpl(wrapper=True)
def evaluate(run: Run, stage: str) -> Any:
    results = yield
    if stage != "final" or not run.eval_dataset or not len(run.eval_dataset):
        return results
    section: DistillSection = run.section("distill")
    state = run.state[STATE]
    teacher = measure(run, state["teacher"], state["teacher_tokenizer"])
    teacher["size_on_disk_mb"] = weights_size_mb(model_location(section.teacher, run.recipe.seed))
    # the student's answers are the core's evaluation's (Run.generate); both tokens/s are warm-model figures
    student = measure(run, run.model, run.tokenizer)
    report: dict[str, Any] = {
        "mode": state["mode"],
        "same_vocabulary": state["same_vocabulary"],
        "teacher_name": section.teacher,
        "labeled_rows": state["labeled_count"],
        "teacher_answered_rows": state["teacher_answered"],
        "on_policy": section.on_policy_share,
        "teacher": teacher,
        "student": student,
        "quality_ratio": ratio(student["task_metric"], teacher["task_metric"]),
        "speedup": ratio(student["generation_tokens_per_s"], teacher["generation_tokens_per_s"]),
    }
    if section.on_policy and "trainer" in state:
        trainer = state["trainer"]
        report["on_policy_batches"] = trainer.sampled
        # what on-policy costs: the seconds spent sampling (of the whole training time) and the samples' length
        report["on_policy_sampling_s"] = round(trainer.sampling_seconds, 1)
        report["on_policy_sample_tokens"] = trainer.sampled_tokens
        report["on_policy_samples_at_cap"] = trainer.capped
    record(run, "teacher", section.teacher, teacher)
    if "baseline" in state:
        report["baseline"] = state["baseline"]
        report["baseline_quality_ratio"] = ratio(report["baseline"]["task_metric"], teacher["task_metric"])
        record(run, "no-teacher baseline", f"{run.recipe.model.name}, SFT on the labeled rows", report["baseline"])
    run.metrics[STATE] = report
    return results


@hookimpl(wrapper=True)
def export(run: Run) -> Any:
    written = yield
    report = run.metrics.get(STATE)
    if report:
        report["student"]["size_on_disk_mb"] = weights_size_mb(run.artifacts.get("model"))
    return written
