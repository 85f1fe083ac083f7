"""GRPO: online reinforcement learning with verifiable rewards (TRL's GRPOTrainer).

For every training prompt the model samples ``num_generations`` completions; each is scored by
the reward functions the recipe names (``[grpo] rewards = { task_match = 1.0, valid_json = 0.2 }``),
and the model learns to prefer the completions that scored above their group's mean. Rewards are
plugins: the core's built-ins (``task_match``, ``valid_json``, ``answer_format``,
``length_penalty``), any installed package's (listed in ``methods`` next to ``grpo``), and
reward models trained with the ``reward`` method (``reward_models = { "runs/reward" = 0.5 }``).
Reward functions receive every data column of the prompt's row, ``output`` being the reference answer.

``methods = ["grpo", "lora"]`` (or with ``qlora``) trains adapters; the reference of the KL
penalty (``beta > 0``) is then the model with its adapter disabled. Start from a model that
already gets some answers right (a pipeline after ``sft``): a group whose rewards are all equal
teaches nothing. ``train.batch_size`` counts completions, so it is a multiple of ``num_generations``.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain import (
    DataError,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    check_model_name,
    check_rewards,
    hookimpl,
    is_adapter_model,
    is_local,
    load_pretrained,
    reward_scores,
    training_arguments,
    use_chunked_loss,
)

STATE = "grpo"
LossType = Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"]
SUMS_TOKENS = ("dapo", "dr_grpo", "bnpo", "cispo")
"""Losses that sum per-token terms: with sequence-level ratios each completion counts by its length (TRL warns)."""


@dataclass
class GRPOSection:
    """``[grpo]``: what is rewarded and how completions are sampled (optimisation settings live in ``[train]``)."""

    rewards: dict[str, float] = field(default_factory=lambda: {"task_match": 1.0})
    """Reward functions by name, with their weights (``ptrain list -v`` shows every installed one)."""
    reward_models: dict[str, float] = field(default_factory=dict)
    """Reward models, with their weights: a ptrain run of the ``reward`` method, a model directory or a hub ID."""
    num_generations: int = 4
    """Completions sampled per prompt: the group whose rewards are compared."""
    max_completion_length: int = 64
    """Tokens sampled per completion (and generated per held-out prompt when evaluating)."""
    temperature: float = 1.0
    """Sampling temperature of the completions; lower explores less."""
    beta: float = 0.0
    """Weight of the KL penalty towards the starting model; 0 keeps no reference model (TRL's default)."""
    loss_type: LossType = "dapo"
    """TRL's loss: ``dapo`` (token-level, no length bias), ``grpo`` (per-sequence mean), ``dr_grpo``, ``bnpo``, ``cispo``, ``sapo``."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's (or batch's) reward standard deviation; ``none`` as Dr. GRPO recommends."""
    epsilon: float = 0.2
    """Clipping range of the policy ratio."""
    num_iterations: int = 1
    """Optimisation passes over each batch of generated completions."""
    mask_truncated_completions: bool = False
    """Leave completions cut at ``max_completion_length`` out of the loss (DAPO)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Where the policy ratio is taken and clipped: per ``token`` (GRPO), or once per completion from the mean
    token log-ratio, ``sequence`` (GSPO, Zheng et al. 2025: steadier when the ratios of single tokens are noisy)."""

    def validate(self) -> None:
        if not self.rewards and not self.reward_models:
            raise RecipeError('names no reward; add one, e.g. rewards = { task_match = 1.0 }', key="rewards")
        if self.num_generations < 2:
            raise RecipeError("must be >= 2: GRPO compares the completions of one prompt with each other", key="num_generations")
        if self.max_completion_length < 1:
            raise RecipeError("must be >= 1", key="max_completion_length")
        if self.temperature <= 0:
            raise RecipeError("must be > 0 (sampling needs it; lower values explore less)", key="temperature")
        if self.beta < 0:
            raise RecipeError("must be >= 0 (typical values 0 to 0.1)", key="beta")
        if not 0 < self.epsilon < 1:
            raise RecipeError("must be in (0, 1) (typical value 0.2)", key="epsilon")
        if self.num_iterations < 1:
            raise RecipeError("must be >= 1", key="num_iterations")
        for name in self.reward_models:
            check_model_name(name, f'reward_models["{name}"]')


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"grpo": GRPOSection}


@hookimpl(wrapper=True)
def plan_memory(plan: TrainingPlan) -> Any:
    """Each step trains on ``train.batch_size`` sampled completions of up to ``max_completion_length`` tokens after
    their prompts, generated with a KV cache; ``beta > 0`` adds a reference model."""
    section: GRPOSection = plan.recipe.section("grpo")
    plan.sequence_length = plan.prompt_length + section.max_completion_length
    result = yield
    facts = plan.facts
    cache = plan.recipe.train.batch_size * plan.sequence_length * facts.layers * 2 * facts.kv_heads * facts.head_dim * plan.compute_bytes
    plan.add(
        "generation KV cache", cache / 2**20, "activations_and_other",
        f"{plan.recipe.train.batch_size} completions x {plan.sequence_length} tokens x {facts.layers} layers x keys and values",
        method="grpo",
    )
    if section.beta > 0:
        plan.add_reference_model("grpo")
    return result


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    """Rewards that exist, data with prompts, and batches that hold whole groups: checked before anything loads."""
    section: GRPOSection = recipe.section("grpo")
    for name in section.rewards:
        recipe.reward_function(name, key=f"grpo.rewards.{name}")
    for location in section.reward_models:
        check_reward_model(location)
    fields = recipe.data_fields
    if fields is not None and "instruction" not in fields:
        raise RecipeError(
            f"grpo samples answers to prompts, and {recipe.data.source!r} gives {recipe.data_format!r} rows, which have none; "
            'use rows with prompts (data.format = "prompt_completion", "alpaca", "messages"…) or data.source = "builtin:tasks"',
            key="data.source" if recipe.data.format == "auto" else "data.format",
        )
    train = recipe.train
    per_step = train.batch_size * train.gradient_accumulation_steps
    if per_step % section.num_generations:
        raise RecipeError(
            f"{section.num_generations} completions per prompt do not divide the {per_step} completions of a step "
            f"(train.batch_size {train.batch_size} x gradient_accumulation_steps {train.gradient_accumulation_steps}); "
            "make train.batch_size a multiple of grpo.num_generations",
            key="grpo.num_generations",
        )
    if train.eval_steps and recipe.eval.batch_size % section.num_generations:
        raise RecipeError(
            f"evaluating during training samples {section.num_generations} completions per prompt; make eval.batch_size "
            f"a multiple of it (got {recipe.eval.batch_size})",
            key="eval.batch_size",
        )
    if section.beta > 0 and recipe.model.keep_layers is not None and not recipe.methods_with("adds_adapters"):
        raise RecipeError(
            "beta > 0 needs the starting model as reference, which TRL reloads from the checkpoint without "
            "model.keep_layers; use beta = 0, or an adapter method such as 'lora' (the reference is then the adapter disabled)",
            key="grpo.beta",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("reward (weighted sum)", "final.reward", base=True),
        ReportRow("reward", "final.rewards", base=True, each=True),
        ReportRow("completion length (tokens)", "final.completion_length", base=True, digits=3),
    ]


def check_reward_model(location: str) -> None:
    """A reward model must have a trained scoring head: a ptrain run of the ``reward`` method, or a directory whose
    ``config.json`` names a sequence-classification architecture. A causal LM (an ``sft`` run, a ``builtin:``
    model) would score with a randomly initialised head: refused, from the files only (nothing loads). A hub
    ID is checked when it loads (one label, a classification head)."""
    key = f'grpo.reward_models["{location}"]'
    if location.startswith("builtin:"):
        raise RecipeError(f"{location} is a language model with no reward head; train one with the reward method "
                          "(methods = [\"reward\"]) and name its run directory", key=key)
    if not is_local(location):
        return
    folder = Path(location).expanduser()
    resolved = folder / "recipe.resolved.toml"
    if resolved.is_file():
        try:
            methods = tomllib.loads(resolved.read_text(encoding="utf-8")).get("methods") or []
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            methods = []
        if "reward" not in methods:
            raise RecipeError(f"{location} is a run of {methods or 'unknown methods'}, not of the reward method: its model has "
                              "no trained reward head; train one with methods = [\"reward\"] and name that run", key=key)
        return
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # check_model_name already said what is missing
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise RecipeError(f"{location} is a {architectures[0]}, not a sequence-classification model: it has no trained reward "
                          "head; train one with the reward method (methods = [\"reward\"]) and name its run", key=key)


def _named(name: str, function: Any) -> Any:
    """``function`` under ``name``: TRL logs each reward as ``rewards/<function name>/mean``."""

    def reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return check_rewards(name, function(prompts=prompts, completions=completions, **columns), len(completions))

    reward.__name__ = reward.__qualname__ = name
    return reward


def reward_model_name(location: str) -> str:
    """A metric-safe name for a reward model: ``model_<last path part>``."""
    return "model_" + re.sub(r"[^A-Za-z0-9_]+", "_", Path(location.rstrip("/")).name or location).strip("_")


def reward_models(run: Run) -> list[tuple[str, float, Any]]:
    """``(name, weight, scorer)`` per reward model of the recipe, loaded once per run (sequence classifiers)."""
    state = run.state.setdefault(STATE, {})
    if "reward_models" not in state:
        section: GRPOSection = run.section("grpo")
        loaded = []
        for location, weight in section.reward_models.items():
            model, tokenizer = load_pretrained(
                location, like=run.recipe.model, head="sequence_classification", key=f'grpo.reward_models["{location}"]'
            )
            model.eval().requires_grad_(False)
            if getattr(model.config, "num_labels", 1) != 1:
                raise RecipeError(
                    f"{location!r} has {model.config.num_labels} labels; a reward model has one (train it with the reward method)",
                    key=f'grpo.reward_models["{location}"]',
                )
            scorer = _model_scorer(model, tokenizer, run.recipe.eval.batch_size, run.recipe.train.max_length)
            loaded.append((reward_model_name(location), weight, scorer))
        state["reward_models"] = loaded
    return state["reward_models"]


def _model_scorer(model: Any, tokenizer: Any, batch_size: int, max_length: int) -> Any:
    def score(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return reward_scores(model, tokenizer, prompts, completions, batch_size=batch_size, max_length=max_length)

    return score


def rewards(run: Run) -> list[tuple[str, float, Any]]:
    """Every reward of the recipe as ``(name, weight, function)``: the named functions, then the reward models."""
    section: GRPOSection = run.section("grpo")
    named = [
        (name, weight, run.recipe.reward_function(name, key=f"grpo.rewards.{name}").function)
        for name, weight in section.rewards.items()
    ]
    return named + reward_models(run)


def _require_prompts(dataset: Any, source: str) -> None:
    if "prompt" not in dataset.column_names or not any(dataset["prompt"][:64]):
        raise DataError(f"{source}: grpo needs prompts, and the data has none; give rows with a prompt or instruction")


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    section: GRPOSection = run.section("grpo")
    _require_prompts(run.train_dataset, run.recipe.data.source)
    scored = rewards(run)
    args = training_arguments(
        run,
        GRPOConfig,
        num_generations=section.num_generations,
        max_completion_length=section.max_completion_length,
        temperature=section.temperature,
        beta=section.beta,
        loss_type=section.loss_type,
        scale_rewards=section.scale_rewards,
        epsilon=section.epsilon,
        num_iterations=section.num_iterations,
        mask_truncated_completions=section.mask_truncated_completions,
        importance_sampling_level=section.importance_sampling_level,
        reward_weights=[weight for _, weight, _ in scored],
        include_num_input_tokens_seen=False,  # GRPO counts prompt and completion tokens itself
    )
    evaluate_during = bool(run.recipe.train.eval_steps)
    # the rendered prompt is what the model answers; every other column reaches the reward functions
    train = run.train_dataset.remove_columns([c for c in ("completion",) if c in run.train_dataset.column_names])
    evaluation = run.eval_dataset.remove_columns([c for c in ("completion",) if c in run.eval_dataset.column_names])
    reference = "none (beta = 0)" if section.beta == 0 else "adapter disabled" if is_adapter_model(run.model) else "starting checkpoint"
    run.metrics[STATE] = {
        "rewards": {name: weight for name, weight, _ in scored},
        "num_generations": section.num_generations,
        "beta": section.beta,
        "loss_type": section.loss_type,
        "importance_sampling_level": section.importance_sampling_level,
        "reference": reference,
    }
    run.log.info(
        "grpo: rewards %s, %d completions per prompt, loss %s, importance sampling per %s, beta %s (reference: %s)",
        ", ".join(f"{name} x{weight:g}" for name, weight, _ in scored), section.num_generations, section.loss_type,
        section.importance_sampling_level, section.beta, reference,
    )
    if section.importance_sampling_level == "sequence" and section.loss_type in SUMS_TOKENS:
        run.log.warning(
            "grpo: importance_sampling_level = \"sequence\" with loss_type %r weighs each completion by its length, "
            "which is not GSPO's objective; set grpo.loss_type = \"grpo\" to train GSPO as published", section.loss_type,
        )
    trainer = GRPOTrainer(
        model=run.model,
        reward_funcs=[_named(name, function) for name, _, function in scored],
        args=args,
        train_dataset=train,
        eval_dataset=evaluation if evaluate_during else None,
        processing_class=run.tokenizer,
    )
    use_chunked_loss(run, trainer, temperature=section.temperature)  # policy and reference log-probs, chunk by chunk
    return trainer


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Each reward's mean on held-out prompts (greedy answers, as pass@1), their weighted sum, and the answers' length."""
    rows = list(run.eval_dataset)[: run.recipe.eval.max_samples]
    if not rows or not any(r.get("prompt") for r in rows):
        return None
    section: GRPOSection = run.section("grpo")
    prompts = [r["prompt"] for r in rows]
    answers = run.generate(prompts, section.max_completion_length)  # shared with the core's evaluation at equal lengths
    columns = {key: [r[key] for r in rows] for key in rows[0] if key not in ("prompt", "completion")}
    totals = [0.0] * len(rows)
    means: dict[str, float | None] = {}
    for name, weight, function in rewards(run):
        scores = check_rewards(name, function(prompts=prompts, completions=answers.texts, **columns), len(answers.texts))
        given = [s for s in scores if s is not None]
        means[name] = round(sum(given) / len(given), 4) if given else None
        totals = [t + weight * s if s is not None else t for t, s in zip(totals, scores, strict=True)]
    return {
        "reward": round(sum(totals) / len(totals), 4),
        "rewards": means,
        "completion_length": round(answers.new_tokens / len(rows), 2),
        "reward_prompts": len(rows),
    }
