"""ptrain: plugin-based, recipe-driven LLM post-training.

``ptrain.__all__`` is the whole API a plugin may use; everything else (the modules whose names
start with ``_``) is internal and may change without notice. The contract is in
:mod:`ptrain.hookspecs`; the plugin-author testing kit in :mod:`ptrain.testing`.

Importing ``ptrain`` imports no heavy library: the functions that need torch import it when called.
"""

from __future__ import annotations

from ptrain._artifacts import atomic_dir, dir_size, write_json, write_jsonl, write_text
from ptrain._bnb import release_checkpoint_file, unfit_4bit_layers
from ptrain._cards import write_model_card
from ptrain._chunked import (
    chunked_cross_entropy,
    chunked_distill_loss,
    chunked_kd_loss,
    chunked_token_logprobs,
    use_chunked_lm_head,
    use_chunked_loss,
)
from ptrain._data import chat_prompt, render_prompt, to_dataset, training_tokens
from ptrain._errors import DataError, PtrainError, RecipeError, UsageError
from ptrain._evaluation import (
    METRICS,
    Generations,
    completion_logprobs,
    completion_loss,
    exact_match,
    generate,
    is_language_model,
    json_match,
    metric_for,
    numeric_match,
    perplexity,
    preference_metrics,
    reward_scores,
    sliding_window_perplexity,
    task_scores,
    valid_json,
)
from ptrain._facts import FactsUnavailable, ModelFacts, model_facts
from ptrain._formats import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    chat_messages,
    clip,
    conversation,
    text_field,
)
from ptrain._memory import MemoryUsage, footprint_bytes, measure_memory, memory_in_use_mb
from ptrain._models import (
    check_model_name,
    frozen_copy,
    is_adapter_model,
    load_pretrained,
    model_location,
    resolve_dtype,
)
from ptrain._paths import is_local
from ptrain._plan import MemoryTerm, TrainingPlan
from ptrain._recipe import Recipe
from ptrain._rewards import answer_text, check_rewards
from ptrain._run import Run
from ptrain._sections import DataSection, EvalSection, ModelSection, TrainSection, check_template
from ptrain._tasks import TASKS, Task
from ptrain._tasks import generate as generate_tasks
from ptrain._templates import check_tool_template
from ptrain._tools import run_tool
from ptrain._training import train_auxiliary, training_arguments, world_size
from ptrain._types import (
    ROW_FIELDS,
    TRAITS,
    DataFormat,
    DataRequest,
    DataSource,
    DataSplits,
    HeldOut,
    LoadedModel,
    ReportRow,
    RewardFunction,
    Tool,
    TrainingSetup,
)
from ptrain.hookspecs import hookimpl

__version__ = "0.2.0"
__all__ = [
    # the contract
    "hookimpl", "Run", "Recipe", "LoadedModel", "DataSplits", "TrainingSetup", "ReportRow",
    "DataFormat", "DataSource", "DataRequest", "ROW_FIELDS", "RewardFunction", "Tool", "TRAITS", "HeldOut",
    "ModelSection", "DataSection", "TrainSection", "EvalSection",
    # errors
    "PtrainError", "UsageError", "RecipeError", "DataError",
    # checks at validation (nothing heavy)
    "check_template", "check_model_name", "is_local", "check_tool_template",
    # model facts without weights, and the memory plan (nothing heavy)
    "model_facts", "ModelFacts", "FactsUnavailable", "TrainingPlan", "MemoryTerm",
    # models
    "load_pretrained", "model_location", "resolve_dtype", "unfit_4bit_layers", "release_checkpoint_file", "frozen_copy", "is_adapter_model",
    # data
    "to_dataset", "render_prompt", "chat_prompt", "text_field", "chat_messages", "conversation", "clip", "training_tokens",
    "ALPACA_TEMPLATE", "ALPACA_TEMPLATE_NO_INPUT", "TASKS", "Task", "generate_tasks",
    # training
    "training_arguments", "train_auxiliary", "world_size",
    # losses that never hold the full-vocabulary logits
    "chunked_cross_entropy", "chunked_token_logprobs", "chunked_kd_loss", "chunked_distill_loss", "use_chunked_lm_head", "use_chunked_loss",
    # measuring
    "generate", "Generations", "completion_loss", "completion_logprobs", "task_scores", "metric_for", "METRICS",
    "exact_match", "json_match", "numeric_match", "valid_json", "perplexity", "sliding_window_perplexity",
    "preference_metrics", "reward_scores", "answer_text", "check_rewards", "run_tool", "is_language_model",
    "measure_memory", "MemoryUsage", "memory_in_use_mb", "footprint_bytes",
    # writing
    "atomic_dir", "write_json", "write_jsonl", "write_text", "dir_size", "write_model_card",
    "__version__",
]
