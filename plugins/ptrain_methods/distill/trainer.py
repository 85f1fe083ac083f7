"""The distillation trainer (an SFTTrainer whose loss adds the teacher's logits) and the no-teacher baseline."""

from __future__ import annotations

import copy
from typing import Any

from ptrain import Run, to_dataset, train_auxiliary, training_arguments

from .losses import chunked_logit_kd_loss, completion_ids, logit_kd_loss, uld_loss


def distill_trainer_class() -> type:
    """An ``SFTTrainer`` whose loss adds the teacher's logits (modes ``logit`` and ``uld``)."""
    import torch
    from trl import SFTTrainer

    class DistillationTrainer(SFTTrainer):
        def __init__(self, *args: Any, teacher: Any, teacher_tokenizer: Any, mode: str, section: Any, chunked: int | None = None,
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.teacher, self.teacher_tokenizer, self.mode, self.section = teacher, teacher_tokenizer, mode, section
            self.chunked = chunked  # tokens per chunk of the logit-KD loss (train.loss_chunk_tokens); None: full logits

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if self.mode == "sequence":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            section = self.section
            if self.mode == "logit" and self.chunked is not None and not return_outputs:
                # train.chunked_loss: neither model's full-vocabulary logits are held
                chunked = chunked_logit_kd_loss(
                    model, self.teacher, inputs, section.temperature, section.alpha, section.divergence, section.beta,
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
                    student_logits, teacher_logits, labels, section.temperature, section.alpha, section.divergence, section.beta,
                    num_items=num_items_in_batch,
                )
                if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            else:
                loss, kd, ce = self.uld_batch(student_logits, inputs)
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
