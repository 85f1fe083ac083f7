"""GRPO: online reinforcement learning with verifiable rewards (TRL's GRPOTrainer).

For every training prompt the model samples ``num_generations`` completions; each is scored by
the reward functions the recipe names (``[grpo] rewards = { task_match = 1.0, valid_json = 0.2 }``),
and the model learns to prefer the completions that scored above their group's mean. Rewards are
plugins: the core's built-ins (``task_match``, ``valid_json``, ``answer_format``,
``length_penalty``), any installed package's (listed in ``methods`` next to ``grpo``), and
reward models trained with the ``reward`` method (``reward_models = { "runs/reward" = 0.5 }``).
Reward functions receive every data column of the prompt's row, ``output`` being the reference answer.

**Tools** (``[grpo] tools = ["calculator"]``, any installed ``tools`` plugin's): the prompts become
conversations rendered with the tools, each completion's tool calls are parsed from the generated text
(TRL's ``GRPOTrainer(tools=...)``), run, and their results fed back through the chat template for up to
``max_tool_turns`` rounds. Rewards then see the final answer as the completion and the whole exchange as
``trajectory`` (assistant turns with ``tool_calls``, ``tool`` turns with the results); every sampled
trajectory is logged to ``rollouts.jsonl`` in the run directory. The chat template must render tools
and tool calls (``data.chat_template``), and the model must already call them (warm-start it with
``sft`` on tool-calling conversations): sampling alone rarely writes a well-formed call.

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
    PtrainError,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    check_model_name,
    check_rewards,
    check_tool_template,
    hookimpl,
    is_adapter_model,
    is_local,
    load_pretrained,
    reward_scores,
    run_tool,
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
    tools: list[str] = field(default_factory=list)
    """Tools the model may call while it answers, by name (``ptrain list -v`` shows every installed one)."""
    max_tool_turns: int = 2
    """Rounds of tool calls per completion (TRL's ``max_tool_calling_iterations``); ``max_completion_length``
    counts every round's tokens, the tools' results included."""

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
        if self.max_tool_turns < 1:
            raise RecipeError("must be >= 1 (rounds of tool calls per completion)", key="max_tool_turns")
        if len(set(self.tools)) != len(self.tools):
            raise RecipeError(f"names a tool twice ({', '.join(self.tools)}); list each once", key="tools")
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
    for i, name in enumerate(section.tools):
        recipe.tool(name, key=f"grpo.tools[{i}]")
    if section.tools:
        check_tool_template(recipe, key="grpo.tools")
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
        ReportRow("answers that called a tool", "final.tool_call_rate", base=True),
        ReportRow("answers right with the tool", "final.tool_use_correct", base=True, chart="quality"),
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


def _named(name: str, function: Any, log: RolloutLog | None = None) -> Any:
    """``function`` under ``name``: TRL logs each reward as ``rewards/<function name>/mean``. Tool rollouts come as
    conversations: the reward then gets the final answer as the completion and the whole exchange as ``trajectory``."""

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if completions and isinstance(completions[0], list):
            columns = {**columns, "trajectory": completions}
            prompts, completions = [_user_text(p) for p in prompts], [final_answer(c) for c in completions]
        scores = check_rewards(name, function(prompts=prompts, completions=completions, **columns), len(completions))
        if log is not None:
            log.record(name, prompts, columns.get("trajectory") or completions, completions, scores, columns.get("trainer_state"))
        return scores

    reward.__name__ = reward.__qualname__ = name
    return reward


def _user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def final_answer(trajectory: list[dict[str, Any]]) -> str:
    """The text of a trajectory's last assistant turn; "" when it ended on a tool call or its result (no answer given)."""
    last = trajectory[-1] if trajectory else {}
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return ""
    return str(last.get("content") or "").strip()


def tool_calls_of(trajectory: Any) -> list[dict[str, Any]]:
    """The ``tool`` turns of a trajectory (a plain-text completion has none)."""
    return [m for m in trajectory if m.get("role") == "tool"] if isinstance(trajectory, list) else []


def failed(message: dict[str, Any]) -> bool:
    """A tool turn whose call failed: its content is the ``{'error': ...}`` TRL (and :func:`ptrain.run_tool`) feed back."""
    return str(message.get("content", "")).startswith("{'error'")


class RolloutLog:
    """Every sampled completion of a run with tools, one JSON line each in ``rollouts.jsonl``: the step, the prompt,
    the trajectory (tool calls and their results), the final answer and each reward. Each reward wrapper reports its
    scores; the last one of the batch writes the lines, so a line holds all of a completion's rewards."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names = path, names
        self.scores: dict[str, list[float | None]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, name: str, prompts: list[str], trajectories: list[Any], answers: list[str],
               scores: list[float | None], state: Any) -> None:
        self.scores[name] = scores
        if name != self.names[-1]:
            return
        step = getattr(state, "global_step", None)
        with self.path.open("a", encoding="utf-8") as out:
            for i, (prompt, trajectory, answer) in enumerate(zip(prompts, trajectories, answers, strict=True)):
                line = {"step": step, "prompt": prompt, "trajectory": trajectory, "answer": answer,
                        "tool_calls": len(tool_calls_of(trajectory)),
                        "rewards": {n: self.scores.get(n, [None] * len(answers))[i] for n in self.names}}
                out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self.scores = {}


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


def recipe_tools(run: Run) -> list[Any]:
    """The recipe's :class:`ptrain.Tool` objects, in ``[grpo] tools`` order."""
    section: GRPOSection = run.section("grpo")
    return [run.recipe.tool(name, key=f"grpo.tools[{i}]") for i, name in enumerate(section.tools)]


def conversation(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A row's prompt as chat messages, what tool rollouts render with the tools: its conversation, else one user
    turn of instruction and input (as ``data.chat = true`` renders it)."""
    if row.get("context"):
        return [{k: v for k, v in m.items() if v is not None} for m in row["context"]]
    content = f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]
    return [{"role": "user", "content": content}]


def _conversations(dataset: Any) -> Any:
    """The dataset with ``prompt`` as chat messages (TRL runs tools only for conversational prompts)."""
    return dataset.remove_columns(["prompt"]).map(lambda row: {"prompt": conversation(row)})


def use_tool_call_parser(tokenizer: Any) -> None:
    """TRL parses the model's tool calls with the tokenizer's response template. It knows the templates of the
    families it supports; for any other, the ChatML convention ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    (Hermes, Qwen; what ``recipes/tools/chatml_tools.jinja`` renders) is tried with TRL's Qwen parser on the
    template's own rendering of a call, and used only if it reads the call back exactly."""
    if getattr(tokenizer, "response_template", None) is not None or getattr(tokenizer, "response_schema", None) is not None:
        return
    from trl.chat_template_utils import add_response_schema, parse_response, qwen3_template

    try:
        add_response_schema(tokenizer)
        return
    except ValueError:
        pass
    call = {"type": "function", "function": {"name": "probe_tool", "arguments": {"probe_arg": "probe value"}}}
    user = [{"role": "user", "content": "Hi"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": "", "tool_calls": [call]}], tokenize=False)
    tokenizer.response_template = qwen3_template
    ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    parsed = parse_response(tokenizer, ids, prefix=tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not full.startswith(prompt) or (parsed.get("tool_calls") or [{}])[0].get("function") != call["function"]:
        tokenizer.response_template = None
        raise RecipeError(
            "the chat template writes tool calls in a form TRL cannot parse back; render them as "
            '<tool_call>{"name": ..., "arguments": {...}}</tool_call> after <|im_start|>assistant (recipes/tools/chatml_tools.jinja '
            "does), or use a model family TRL knows (Qwen, Llama 3.1, GLM, gpt-oss…)",
            key="data.chat_template",
        )


def stop_at_turn_end(model: Any, tokenizer: Any) -> None:
    """Sampling stops where the chat template ends an assistant turn, not only at the tokenizer's EOS: with tools the
    turn after a call is the tool's result, so a model that goes on past ``<|im_end|>`` (the tiny models end text with
    ``</s>``) would bury its call in text the parser cannot read. The end-of-turn token joins the model's EOS ids (TRL
    and :func:`tool_rollouts` read them from ``generation_config``)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "probe answer"}],
                                         tokenize=False)
    tail = tokenizer(text[text.rindex("probe answer") + len("probe answer"):], add_special_tokens=False)["input_ids"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    end = next((i for i in tail if i in special), None)
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end is not None and end not in eos:
        model.generation_config.eos_token_id = [*eos, end] if eos else [tokenizer.eos_token_id, end]


def bos_in_template(tokenizer: Any) -> str | None:
    """The tokenizer's template with ``{{ bos_token }}`` in front where the tokenizer adds a BOS the template does not
    render (the tiny llama's ``<s>``), else None. TRL renders rollout prompts with the template alone, while training
    and ptrain's generation tokenize text with the BOS: without it a warm-started model samples from prompts it never
    saw (a 700-step warm start then stopped right after ``<tool_call>``)."""
    bos, template = tokenizer.bos_token, tokenizer.chat_template
    if not bos or not isinstance(template, str):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text)["input_ids"]
    return "{{ bos_token }}" + template if not text.startswith(bos) and ids and ids[0] == tokenizer.bos_token_id else None


def _with_special_tokens(tokenizer: Any, text: str) -> list[int]:
    """``text``'s ids with the tokenizer's BOS unless the template already rendered it."""
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    section: GRPOSection = run.section("grpo")
    _require_prompts(run.train_dataset, run.recipe.data.source)
    scored = rewards(run)
    tools = recipe_tools(run)
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
        **({"max_tool_calling_iterations": section.max_tool_turns} if tools else {}),
    )
    evaluate_during = bool(run.recipe.train.eval_steps)
    # the rendered prompt is what the model answers; every other column reaches the reward functions
    train = run.train_dataset.remove_columns([c for c in ("completion",) if c in run.train_dataset.column_names])
    evaluation = run.eval_dataset.remove_columns([c for c in ("completion",) if c in run.eval_dataset.column_names])
    log = None
    if tools:
        train, evaluation = _conversations(train), _conversations(evaluation)
        use_tool_call_parser(run.tokenizer)
        stop_at_turn_end(run.model, run.tokenizer)
        if run.is_main_process:
            log = RolloutLog(run.dir / "rollouts.jsonl", [name for name, _, _ in scored])
            run.artifacts["rollouts"] = str(log.path)
    reference = "none (beta = 0)" if section.beta == 0 else "adapter disabled" if is_adapter_model(run.model) else "starting checkpoint"
    run.metrics[STATE] = {
        "rewards": {name: weight for name, weight, _ in scored},
        "num_generations": section.num_generations,
        "beta": section.beta,
        "loss_type": section.loss_type,
        "importance_sampling_level": section.importance_sampling_level,
        "reference": reference,
    }
    if tools:
        run.metrics[STATE] |= {"tools": [t.name for t in tools], "max_tool_turns": section.max_tool_turns}
    run.log.info(
        "grpo: rewards %s, %d completions per prompt, loss %s, importance sampling per %s, beta %s (reference: %s)%s",
        ", ".join(f"{name} x{weight:g}" for name, weight, _ in scored), section.num_generations, section.loss_type,
        section.importance_sampling_level, section.beta, reference,
        f", tools {', '.join(t.name for t in tools)} (up to {section.max_tool_turns} rounds)" if tools else "",
    )
    if section.importance_sampling_level == "sequence" and section.loss_type in SUMS_TOKENS:
        run.log.warning(
            "grpo: importance_sampling_level = \"sequence\" with loss_type %r weighs each completion by its length, "
            "which is not GSPO's objective; set grpo.loss_type = \"grpo\" to train GSPO as published", section.loss_type,
        )
    try:
        trainer = GRPOTrainer(
            model=run.model,
            reward_funcs=[_named(name, function, log) for name, _, function in scored],
            args=args,
            train_dataset=train,
            eval_dataset=evaluation if evaluate_during else None,
            processing_class=run.tokenizer,
            tools=[t.callable() for t in tools] or None,
        )
    except ValueError as err:
        if tools and "tool calling" in str(err):  # a template only the loaded tokenizer could show
            raise PtrainError(f"grpo.tools: the chat template of {run.recipe.model.name} does not render tool calls and their "
                              "results; set data.chat_template to one that does (recipes/tools/chatml_tools.jinja is one)") from None
        raise
    use_chunked_loss(run, trainer, temperature=section.temperature)  # policy and reference log-probs, chunk by chunk
    rollout_template = bos_in_template(run.tokenizer) if tools else None
    if rollout_template:  # for the rollouts only: the core's text prompts get their BOS from the tokenizer, and the export keeps the template
        from transformers import TrainerCallback

        original = run.tokenizer.chat_template

        class RestoreTemplate(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                run.tokenizer.chat_template = rollout_template

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                run.tokenizer.chat_template = original

        trainer.add_callback(RestoreTemplate())
    return trainer


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Each reward's mean on held-out prompts (greedy answers, as pass@1), their weighted sum, and the answers' length.
    With tools, the answers are greedy tool rollouts (:func:`tool_rollouts`), and the share of answers that called a
    tool and that used it correctly (every call ran, and the final answer is right by the task's metric) are added."""
    rows = list(run.eval_dataset)[: run.recipe.eval.max_samples]
    if not rows or not any(r.get("prompt") for r in rows):
        return None
    section: GRPOSection = run.section("grpo")
    prompts = [r["prompt"] for r in rows]
    columns = {key: [r[key] for r in rows] for key in rows[0] if key not in ("prompt", "completion")}
    tools = recipe_tools(run)
    if tools:
        conversations = [conversation(r) for r in rows]
        trajectories, new_tokens = tool_rollouts(run, conversations, tools, section.max_tool_turns, section.max_completion_length)
        prompts, texts = [_user_text(c) for c in conversations], [final_answer(t) for t in trajectories]
        columns["trajectory"] = trajectories
    else:
        answers = run.generate(prompts, section.max_completion_length)  # shared with the core's evaluation at equal lengths
        texts, new_tokens = answers.texts, answers.new_tokens
    totals = [0.0] * len(rows)
    means: dict[str, float | None] = {}
    for name, weight, function in rewards(run):
        scores = check_rewards(name, function(prompts=prompts, completions=texts, **columns), len(texts))
        given = [s for s in scores if s is not None]
        means[name] = round(sum(given) / len(given), 4) if given else None
        totals = [t + weight * s if s is not None else t for t, s in zip(totals, scores, strict=True)]
    result = {
        "reward": round(sum(totals) / len(totals), 4),
        "rewards": means,
        "completion_length": round(new_tokens / len(rows), 2),
        "reward_prompts": len(rows),
    }
    if tools:
        result |= tool_use(run, prompts, texts, columns, trajectories)
        write_rollouts(run.dir / f"rollouts_{stage}.jsonl", prompts, trajectories, texts)
    return result


def tool_use(run: Run, prompts: list[str], texts: list[str], columns: dict[str, Any], trajectories: list[Any]) -> dict[str, Any]:
    """``tool_call_rate``: the share of answers that called a tool; ``tool_use_correct``: the share that called one, had
    every call run, and ended with an answer right by the task's metric (``task_match``; None without references);
    ``tool_calls_per_answer``."""
    right = run.recipe.reward_function("task_match", key="grpo.tools").function(prompts=prompts, completions=texts, **columns)
    called = [tool_calls_of(t) for t in trajectories]
    judged = [(calls, score) for calls, score in zip(called, right, strict=True) if score is not None]
    correct = [bool(calls) and not any(failed(c) for c in calls) and score == 1.0 for calls, score in judged]
    return {
        "tool_call_rate": round(sum(bool(c) for c in called) / len(called), 4),
        "tool_use_correct": round(sum(correct) / len(correct), 4) if correct else None,
        "tool_calls_per_answer": round(sum(len(c) for c in called) / len(called), 3),
    }


def write_rollouts(path: Path, prompts: list[str], trajectories: list[Any], answers: list[str]) -> None:
    """The held-out rollouts of one stage, one JSON line each (as ``rollouts.jsonl`` logs the sampled ones)."""
    with path.open("w", encoding="utf-8") as out:
        for prompt, trajectory, answer in zip(prompts, trajectories, answers, strict=True):
            line = {"prompt": prompt, "trajectory": trajectory, "answer": answer, "tool_calls": len(tool_calls_of(trajectory))}
            out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")


def tool_rollouts(run: Run, conversations: list[list[dict[str, Any]]], tools: list[Any], max_turns: int,
                  max_new_tokens: int) -> tuple[list[list[dict[str, Any]]], int]:
    """Greedy multi-turn answers with tools, as the training rollouts make them: generate, parse the tool calls (TRL's
    parser), run them (:func:`ptrain.run_tool`), append the results and generate again, for up to ``max_turns`` rounds
    of calls. Returns each prompt's trajectory (the messages after the prompt) and the tokens generated."""
    import torch
    from trl.chat_template_utils import parse_response

    model, tokenizer = run.model, run.tokenizer
    use_tool_call_parser(tokenizer)
    stop_at_turn_end(model, tokenizer)
    callables = [tool.callable() for tool in tools]
    by_name = dict(zip((tool.name for tool in tools), callables, strict=True))
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    trajectories: list[list[dict[str, Any]]] = [[] for _ in conversations]
    active, new_tokens, size = list(range(len(conversations))), 0, run.recipe.eval.batch_size
    side, training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for turn in range(max_turns + 1):
            again = []
            for start in range(0, len(active), size):
                chunk = active[start:start + size]
                texts = [tokenizer.apply_chat_template(conversations[i] + trajectories[i], tools=callables, tokenize=False,
                                                       add_generation_prompt=True) for i in chunk]
                encoded = [_with_special_tokens(tokenizer, text) for text in texts]
                batch = tokenizer.pad({"input_ids": encoded}, return_tensors="pt").to(model.device)
                with torch.no_grad():
                    output = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, temperature=None,
                                            top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
                for i, prefix, row in zip(chunk, encoded, output[:, batch["input_ids"].shape[1]:].tolist(), strict=True):
                    row = row[: next((j + 1 for j, t in enumerate(row) if t in stop), len(row))]
                    new_tokens += len(row)
                    message = parse_response(tokenizer, row, prefix=prefix, tools=callables)
                    trajectories[i].append(message)
                    if message.get("tool_calls") and turn < max_turns:
                        for call in message["tool_calls"]:
                            function = call.get("function", {})
                            result, _ = run_tool(by_name, function.get("name"), function.get("arguments"))
                            trajectories[i].append({"role": "tool", "name": function.get("name"), "content": result})
                        again.append(i)
            active = again
    finally:
        tokenizer.padding_side = side
        model.train(training)
    return trajectories, new_tokens
