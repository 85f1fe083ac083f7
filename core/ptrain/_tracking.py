"""Experiment tracking (``train.report_to``): the trainer's loss curves through the transformers
integrations, plus what those leave out: the resolved recipe as the run's parameters and the
final (and base) metrics as its summary.

* ``tensorboard``: event files under ``<run dir>/logs`` (the recipe as text, final metrics as scalars);
* ``mlflow`` (``pip install "ptrain[mlflow]"``): a local file store, ``<run dir>/mlruns`` unless
  ``MLFLOW_TRACKING_URI`` says otherwise; experiment ``MLFLOW_EXPERIMENT_NAME`` or ``ptrain``;
* ``wandb`` (``pip install "ptrain[wandb]"``): project ``WANDB_PROJECT`` or ``ptrain``, files under the run
  directory; ``WANDB_MODE=offline`` keeps everything local (``wandb sync`` uploads it later).

ptrain opens the MLflow and W&B runs itself before training, so the trainer's callbacks log into
them, and closes them once the run's metrics are final.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Any

from ptrain._errors import RecipeError

if TYPE_CHECKING:
    from ptrain._run import Run

log = logging.getLogger("ptrain")
REPORTERS = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", 'pip install "ptrain[mlflow]"'),
    "wandb": ("wandb", 'pip install "ptrain[wandb]"'),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "clearml": ("clearml", "pip install clearml"),
    "neptune": ("neptune", "pip install neptune"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "trackio": ("trackio", "pip install trackio"),
    "swanlab": ("swanlab", "pip install swanlab"),
}
"""``train.report_to`` values: the module each needs and how to install it."""


def check_report_to(reporters: list[str]) -> None:
    """A RecipeError for a reporter whose package is missing; imports nothing.

    Whether a name is one transformers knows is the ``[train]`` section's own check (against
    transformers' list, with suggestions); this one only adds what to install.
    """
    for i, name in enumerate(reporters):
        if name not in REPORTERS:
            continue
        module, install = REPORTERS[name]
        if importlib.util.find_spec(module) is None:
            raise RecipeError(f"{name!r} needs the {module} package, which is not installed: {install}", key=f"train.report_to[{i}]")


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def summary_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics.json`` worth a summary: base, final, train and each method's, flattened."""
    numbers = {}
    for key, value in flatten({k: v for k, v in metrics.items() if k not in ("report", "artifacts", "run")}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[key] = float(value)
    return numbers


def recipe_params(run: Run) -> dict[str, str]:
    """The resolved recipe, one parameter per key (``recipe.train.learning_rate``)."""
    from ptrain._redact import MASK, redact, secret_key

    params = {}
    for key, value in flatten(run.recipe.to_table(), "recipe").items():
        text = MASK if secret_key(key) else redact(str(value))
        params[key] = text if len(text) <= 250 else text[:247] + "..."  # MLflow's limit on older stores
    return params


class Tracking:
    """The trackers of one run: opened before training, closed with the final metrics."""

    def __init__(self, run: Run):
        self.run = run
        self.reporters = list(run.recipe.train.report_to)
        self.mlflow: Any = None
        self.wandb: Any = None

    def begin(self) -> None:
        from ptrain._redact import redact, redact_data

        run = self.run
        if "mlflow" in self.reporters:
            logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating a new experiment": ptrain says where the run is
            import mlflow

            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.dir / "mlruns").resolve().as_uri()
            if uri.startswith("file:"):  # MLflow 3 asks to opt in to its file store, which needs no database
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ptrain")
            if mlflow.active_run() is not None:
                mlflow.end_run()
            self.mlflow = mlflow.start_run(run_name=redact(run.recipe.name))
            mlflow.log_params(recipe_params(run))
            mlflow.set_tags(redact_data({"ptrain.methods": ", ".join(run.recipe.methods), "ptrain.model": run.recipe.model.name}))
            log.info("mlflow: run %s in %s", self.mlflow.info.run_id, mlflow.get_tracking_uri())
        if "wandb" in self.reporters:
            import wandb

            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "ptrain"), name=redact(run.recipe.name), dir=str(run.dir),
                config=redact_data({"recipe": run.recipe.to_table()}), tags=list(run.recipe.methods), reinit="finish_previous",
            )
            log.info("wandb: run %s (%s) in %s", self.wandb.id, os.environ.get("WANDB_MODE", "online"), self.wandb.dir)

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars a hook logged outside the trainer's own log entries (``Run.log_scalars``)."""
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({key.replace("@", "_"): value for key, value in values.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log(dict(values))
        if "tensorboard" in self.reporters:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.run.dir / "logs"))
            try:
                for key, value in values.items():
                    writer.add_scalar(key, value, step)
            finally:
                writer.close()

    def end(self, failed: bool = False) -> None:
        from ptrain._redact import redact

        metrics = summary_metrics(self.run.metrics)
        if self.mlflow is not None:
            import mlflow

            if not failed:
                mlflow.log_metrics({redact(key.replace("@", "_")): value for key, value in metrics.items()})
                mlflow.log_artifact(str(self.run.dir / "recipe.resolved.toml"))
            mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.mlflow = None
        if self.wandb is not None:
            if not failed:
                self.wandb.summary.update({redact(key): value for key, value in metrics.items()})
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None
        if "tensorboard" in self.reporters and not failed:
            self._tensorboard(metrics)

    def _tensorboard(self, metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from ptrain._redact import redact, redact_toml

        step = (self.run.metrics.get("train") or {}).get("steps") or 0
        writer = SummaryWriter(log_dir=str(self.run.dir / "logs"))
        try:
            writer.add_text("recipe", "```toml\n" + redact_toml(self.run.recipe.to_toml()) + "\n```", step)
            for key, value in metrics.items():
                if key.startswith(("base.", "final.")):
                    writer.add_scalar(redact(key.replace(".", "/", 1)), value, step)
        finally:
            writer.close()


def start_tracking(run: Run) -> Tracking | None:
    """Open the run's trackers (on the main process, when the recipe reports to any)."""
    if not run.recipe.train.report_to or not run.is_main_process:
        return None
    tracking = Tracking(run)
    tracking.begin()
    return tracking
