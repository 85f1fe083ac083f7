"""The distillation trainer (an SFTTrainer whose loss adds the teacher's logits) and the no-teacher baseline."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from ptrain import Run, to_dataset, train_auxiliary, training_arguments

from .losses import (
    chunked_logit_kd_loss,
    completion_ids,
    hybrid_uld_loss,
    logit_kd_loss,
    matched_vocabulary,
    shared_starts,
    token_starts,
    uld_loss,
)

SAMPLES = "on_policy_samples.jsonl"
KEPT_PER_BATCH = 4  # on-policy samples written per batch: enough to read what the student learned from, bounded on long runs


def distill_trainer_class() -> type:
    """An ``SFTTrainer`` whose loss adds the teacher's logits (modes ``logit`` and ``uld``)."""
    import torch
    from trl import SFTTrainer

    class DistillationTrainer(SFTTrainer):
        def __init__(self, *args: Any, teacher: Any, teacher_tokenizer: Any, mode: str, section: Any, chunked: int | None = None,
                     samples_path: Path | None = None, max_new_tokens: int = 32, max_length: int | None = None, **kwargs: Any):
            if section.on_policy_share and kwargs.get("train_dataset") is not None:
                self.prompt_ids = prompt_lookup(kwargs["processing_class"], kwargs["train_dataset"])
            super().__init__(*args, **kwargs)
            self.teacher, self.teacher_tokenizer, self.mode, self.section = teacher, teacher_tokenizer, mode, section
            self.chunked = chunked  # tokens per chunk of the logit-KD loss (train.loss_chunk_tokens); None: full logits
            self.samples_path, self.max_new_tokens, self.max_length = samples_path, max_new_tokens, max_length
            self.share = section.on_policy_share
            self.batches = self.sampled = 0  # micro-batches seen, and how many of them were the student's samples
            self.sampling_seconds, self.sampled_tokens, self.capped = 0.0, 0, 0  # the samples' cost, length, rows cut at the cap
            self.on_policy_batch = False

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            """GKD's step: on a share ``lmbda`` of the batches, the student's samples replace the batch's completions.

            The choice is a fixed schedule (a batch is sampled when the count so far falls behind ``lmbda`` times
            the batches seen) rather than GKD's coin flip: the same share on every run and every process, so the
            processes of a distributed run agree and a short run gets its share. The token count the Trainer took
            from the original labels no longer holds, so a sampled batch's loss is its own per-token mean.
            """
            self.batches += 1
            self.on_policy_batch = self.sampled < self.share * self.batches
            if self.on_policy_batch:
                self.sampled += 1
                inputs = self.student_samples(model, inputs)
                num_items_in_batch = None
            # "train" whatever model.training says: the Trainer switches the model to training inside the step
            if self.share:
                self._metrics["train"]["on_policy"].append(float(self.on_policy_batch))
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self.on_policy_batch = False

        def student_samples(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
            """The batch's prompts completed by the student (sampled, as in TRL's GKD), right-padded like the collator's.

            Each row becomes prompt + sample up to and including its first EOS, labels on the sample only, so the
            logit and ULD losses read it exactly as they read a dataset batch.
            """
            from trl.models import unwrap_model_for_generation

            ids, labels = inputs["input_ids"], inputs["labels"]
            attention = inputs.get("attention_mask")
            if attention is None:
                attention = torch.ones_like(ids)
            tokenizer = self.processing_class
            prompts = []
            for row in range(ids.shape[0]):
                region = ids[row][(attention[row] == 1) & (labels[row] == -100)]
                # the whole prompt, as at inference: the batch lacks the prompt's last tokens where they merge with the completion's
                full = getattr(self, "prompt_ids", {}).get(tuple(region.tolist()))
                prompts.append(region if full is None else torch.tensor(full, dtype=ids.dtype, device=ids.device))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            width = max(len(p) for p in prompts)
            left = torch.full((len(prompts), width), pad, dtype=ids.dtype, device=ids.device)
            left_mask = torch.zeros_like(left)
            for row, prompt in enumerate(prompts):
                left[row, width - len(prompt) :] = prompt
                left_mask[row, width - len(prompt) :] = 1
            options = {
                "max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.section.sample_temperature or 1.0,
                "top_k": 0, "top_p": 1.0, "pad_token_id": pad, "eos_token_id": tokenizer.eos_token_id,
            }
            started = time.perf_counter()
            with unwrap_model_for_generation(
                model, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
            ) as unwrapped, torch.no_grad():
                training = unwrapped.training
                unwrapped.eval()
                try:
                    sequences = unwrapped.generate(input_ids=left, attention_mask=left_mask, **options)
                finally:
                    unwrapped.train(training)
            self.sampling_seconds += time.perf_counter() - started
            samples = []
            for row, prompt in enumerate(prompts):
                sample = sequences[row, width:]
                ends = (sample == tokenizer.eos_token_id).nonzero()
                if len(ends):
                    sample = sample[: int(ends[0]) + 1]
                else:
                    self.capped += 1
                if self.max_length:
                    sample = sample[: max(self.max_length - len(prompt), 1)]
                samples.append(sample)
                self.sampled_tokens += len(sample)
            rows = [torch.cat([p, s]) for p, s in zip(prompts, samples, strict=True)]
            length = max(len(r) for r in rows)
            new_ids = torch.full((len(rows), length), pad, dtype=ids.dtype, device=ids.device)
            new_mask = torch.zeros_like(new_ids)
            new_labels = torch.full_like(new_ids, -100)
            for row, (prompt, sample) in enumerate(zip(prompts, samples, strict=True)):
                end = len(prompt) + len(sample)
                new_ids[row, :end] = rows[row]
                new_mask[row, :end] = 1
                new_labels[row, len(prompt) : end] = sample
            self.keep_samples(new_ids, new_mask, new_labels)
            return {**inputs, "input_ids": new_ids, "attention_mask": new_mask, "labels": new_labels}

        def keep_samples(self, ids: Any, attention: Any, labels: Any) -> None:
            """Append a few of the batch's samples, decoded from the very tensors the loss reads, to ``distill/on_policy_samples.jsonl``."""
            if self.samples_path is None:
                return
            decode = self.processing_class.decode
            self.samples_path.parent.mkdir(parents=True, exist_ok=True)
            with self.samples_path.open("a", encoding="utf-8") as handle:
                for row in range(min(KEPT_PER_BATCH, ids.shape[0])):
                    completion = labels[row] != -100
                    prompt = (attention[row] == 1) & ~completion
                    handle.write(json.dumps({
                        "step": self.state.global_step,
                        "prompt": decode(ids[row][prompt], skip_special_tokens=True),
                        "completion": decode(ids[row][completion], skip_special_tokens=True),
                        "completion_ids": ids[row][completion].tolist(),
                    }) + "\n")

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if self.mode == "sequence":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # the run's mixed precision (bf16 autocast on a CPU that computes bf16, or a GPU) for both models: the
            # Trainer casts only inside the student's own forward, which the chunked loss bypasses (it reads the
            # backbone's hidden states), and never the teacher, which it did not prepare
            with self.accelerator.autocast():
                return self.distill_loss(model, inputs, return_outputs, num_items_in_batch)

        def distill_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any) -> Any:
            labels = inputs["labels"]
            section = self.section
            # on the student's own samples the loss is the divergence alone (as in GKD): CE would teach its own sample
            alpha = 1.0 if self.on_policy_batch else section.alpha
            if self.mode == "logit" and self.chunked is not None and not return_outputs:
                # train.chunked_loss: neither model's full-vocabulary logits are held
                chunked = chunked_logit_kd_loss(
                    model, self.teacher, inputs, section.temperature, alpha, section.divergence, section.beta,
                    num_items=num_items_in_batch, chunk_tokens=self.chunked,
                )
                if chunked is not None:
                    loss, kd, ce = chunked
                    if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                        loss = loss * self.accelerator.num_processes
                    mode = "train" if model.training else "eval"
                    self._metrics[mode]["kd_loss"].append(float(kd))
                    self._metrics[mode]["ce_loss"].append(float(ce))
                    return loss
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
            # a prompt-learning adapter (prompt_tuning, p_tuning) returns its virtual tokens' logits first
            student_logits = outputs.logits[:, -inputs["input_ids"].shape[1] :]
            if self.mode == "logit":
                with torch.no_grad():
                    teacher_logits = self.teacher(
                        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False
                    ).logits
                # normalised by the step's token count, as SFT's loss is: the same gradient whatever the
                # split into processes and accumulation steps (the Trainer then undoes the processes' average)
                loss, kd, ce = logit_kd_loss(
                    student_logits, teacher_logits, labels, section.temperature, alpha, section.divergence, section.beta,
                    num_items=num_items_in_batch,
                )
                if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                loss, kd, ce = self.uld_batch(student_logits, inputs, alpha)
            mode = "train" if model.training else "eval"
            self._metrics[mode]["kd_loss"].append(float(kd))
            self._metrics[mode]["ce_loss"].append(float(ce))
            return (loss, outputs) if return_outputs else loss

        def uld_batch(self, student_logits: Any, inputs: dict[str, Any], alpha: float) -> tuple[Any, Any, Any]:
            """ULD + CE: the batch's texts re-tokenized for the teacher.

            ``uld_matched`` (the default): at each character where a student token and a teacher token both start,
            the two next-token distributions are compared by :func:`hybrid_uld_loss` (tokens that are the same text
            directly, the rest sorted). Otherwise the original ULD: sorted distributions at aligned positions.
            """
            labels, ids = inputs["labels"], inputs["input_ids"]
            attention = inputs.get("attention_mask")
            if attention is None:
                attention = torch.ones_like(ids)
            student_tok, teacher_tok = self.processing_class, self.teacher_tokenizer
            targets = labels[:, 1:]
            mask = targets != -100
            ce = torch.nn.functional.cross_entropy(student_logits[:, :-1][mask].float(), targets[mask]) if mask.any() else None
            rows = []
            for row in range(ids.shape[0]):
                completion = labels[row] != -100
                prompt = (attention[row] == 1) & ~completion
                prompt_ids, completion_ids_ = ids[row][prompt].tolist(), ids[row][completion].tolist()
                prompt_text = student_tok.decode(prompt_ids, skip_special_tokens=True)
                # decoded with its prompt, as the text reads (a lone completion can lose its leading space)
                completion_text = student_tok.decode(prompt_ids + completion_ids_, skip_special_tokens=True)[len(prompt_text) :]
                full, start = completion_ids(teacher_tok, prompt_text, completion_text)
                rows.append((prompt_ids, completion_ids_, prompt_text, full, start, student_logits[row, :-1][mask[row]]))
            width = max(len(full) for _, _, _, full, _, _ in rows)
            pad = teacher_tok.pad_token_id or 0
            teacher_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            teacher_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (_, _, _, full, _, _) in enumerate(rows):
                teacher_ids[row, : len(full)] = torch.tensor(full)
                teacher_mask[row, : len(full)] = 1
            device = next(self.teacher.parameters()).device
            with torch.no_grad():
                teacher_logits = self.teacher(
                    input_ids=teacher_ids.to(device), attention_mask=teacher_mask.to(device), use_cache=False
                ).logits
            section = self.section
            per_token, student_places, teacher_places = [], [], []
            for row, (prompt_ids, completion_ids_, prompt_text, full, start, student_row) in enumerate(rows):
                teacher_row = teacher_logits[row, start - 1 : len(full) - 1].to(student_logits.device)
                if not section.uld_matched or not teacher_tok.decode(full, skip_special_tokens=True).startswith(prompt_text):
                    # plain ULD, also where the teacher's tokenizer rewrites the text (no character lines up with certainty)
                    per_token.append(uld_loss(student_row, teacher_row, section.temperature))
                    continue
                places = shared_starts(
                    token_starts(student_tok, prompt_ids, completion_ids_),
                    token_starts(teacher_tok, full[:start], full[start:], origin=len(prompt_text)),
                )
                if places:
                    s_index, t_index = (torch.tensor(side, device=student_row.device) for side in zip(*places, strict=True))
                    student_places.append(student_row[s_index])
                    teacher_places.append(teacher_row[t_index])
            if student_places:  # every row's places in one call: the matched and unmatched masks are built once a batch
                per_token.append(hybrid_uld_loss(
                    torch.cat(student_places), torch.cat(teacher_places), self.matched_tokens(), section.temperature, section.divergence, section.beta
                ))
            uld = torch.cat(per_token).mean() if per_token and sum(len(p) for p in per_token) else student_logits.sum() * 0.0
            if ce is None:
                return uld * alpha, uld.detach(), uld.detach() * 0
            return alpha * uld + (1 - alpha) * ce, uld.detach(), ce.detach()

        def matched_tokens(self) -> tuple[Any, Any]:
            """The pairs of tokens that are the same text in both vocabularies, found once."""
            if getattr(self, "_matched", None) is None:
                self._matched = matched_vocabulary(self.processing_class, self.teacher_tokenizer)
            return self._matched

    return DistillationTrainer


def prompt_lookup(tokenizer: Any, rows: Any) -> dict[tuple[int, ...], list[int]]:
    """The training prompts' token ids, keyed by the part of them a training batch holds.

    TRL's SFT tokenization starts the completion where ``prompt`` and ``prompt + completion`` tokenize apart,
    so a batch can lack the prompt's last tokens (``"Response:\\n"`` merged with the answer's first letters).
    The student must sample after the whole prompt, as it is asked at inference.
    """
    from trl.data_utils import common_prefix_length

    lookup: dict[tuple[int, ...], list[int]] = {}
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"])["input_ids"]
        lookup[tuple(full[: common_prefix_length(prompt, full)])] = prompt
    return lookup


def train_baseline(run: Run, labeled: list[dict[str, Any]]) -> Any:
    """The same student, from the same starting weights, trained with plain SFT on the labeled rows alone, same steps."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(run.recipe.seed)
    model = copy.deepcopy(run.model)  # before training: the student's starting point, adapters included
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
        model=model, args=args, train_dataset=to_dataset(labeled).select_columns(["prompt", "completion"]), processing_class=run.tokenizer
    )
    run.log.info("distill: training the baseline (plain SFT on %d labeled rows, %d steps)", len(labeled), args.max_steps)
    train_auxiliary(run, trainer, "baseline")
    return model
