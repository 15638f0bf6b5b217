"""MLflow tracking for training, decoder training and evaluation.

The driver owns the run: it creates it (whole config as params) before any worker starts and, after
`fit`, logs the exported model, registers it and draws the plots. Rank 0 attaches to the same run
by id to stream step metrics and system metrics, so a worker restarted by Ray after a failure keeps
writing into the run it belongs to instead of opening a new one. Other ranks never touch MLflow.
"""

from __future__ import annotations

import logging

import numpy as np

from pipelines import tracking_store

log = logging.getLogger(__name__)


def setup(tracking_uri: str, experiment: str) -> str:
    """The experiment's id in the store (created, with SQLite artifacts beside the database)."""
    return tracking_store.experiment_id(tracking_uri, experiment)


def start_run(tracking_uri: str, experiment: str, run_name: str | None, params: dict, tags: dict):
    """Create the run on the driver; returns its id (the run is left open for the workers)."""
    exp_id = setup(tracking_uri, experiment)
    client = tracking_store.client(tracking_uri)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


class StepLogger:
    """Rank 0's handle on the run: batched step metrics, plus MLflow's system-metrics sampler."""

    def __init__(self, tracking_uri: str, run_id: str, system_metrics: bool = True):

        self.run_id = run_id
        self.client = tracking_store.client(tracking_uri)
        self._monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(
                    run_id,
                    sampling_interval=5,
                    samples_before_logging=1,
                    resume_logging=True,
                    tracking_uri=tracking_uri,
                )
                self._monitor.start()
            except Exception as e:  # psutil missing or no permission: metrics, not training
                log.warning("system metrics off: %s", e)

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, step)
            for k, v in metrics.items()
            if v is not None and np.isfinite(float(v))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def tag(self, key: str, value: str) -> None:
        """A run tag (the last attempt's value wins: e.g. where a restarted group resumed)."""
        self.client.set_tag(self.run_id, key, value[:5000])

    def log_figure(self, fig, path: str) -> None:
        self.client.log_figure(self.run_id, fig, path)

    def close(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as e:
                log.warning("system metrics monitor did not stop cleanly: %s", e)


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:

    hist = tracking_store.client(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in hist)


def plot_curves(tracking_uri: str, run_id: str, keys: list[str], path: str, title: str) -> None:
    """A PNG of metric histories (loss curves, validation recall) logged to the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for key in keys:
        hist = metric_history(tracking_uri, run_id, key)
        if hist:
            s, v = zip(*hist, strict=True)
            ax.plot(s, v, label=key, marker="." if len(hist) < 30 else None)
            drawn += 1
    ax.set_xlabel("step")
    ax.set_title(title)
    if drawn:
        ax.legend()
    fig.tight_layout()
    tracking_store.client(tracking_uri).log_figure(run_id, fig, path)
    plt.close(fig)


def similarity_figure(sim: np.ndarray, title: str = "val similarity (text x video)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    ax.set_xlabel("video (val clip)")
    ax.set_ylabel("caption query")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def log_model_dir(tracking_uri: str, run_id: str, local_dir: str, artifact_path: str = "model"):

    tracking_store.client(tracking_uri).log_artifacts(run_id, local_dir, artifact_path)


def register(tracking_uri: str, run_id: str, name: str, artifact_path: str = "model", tags=None):
    """A new version of registered model `name` whose source is the run's exported model dir."""
    from mlflow.exceptions import MlflowException

    client = tracking_store.client(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
    log.info("registered %s version %s (source %s)", name, mv.version, source)
    return mv


def resolve_model(uri: str, tracking_uri: str | None = None) -> str:
    """A local directory for DIR | s3://DIR | runs:/<id>/<path> | models:/<name>/<version|alias>
    (downloads land in the model cache, `pipelines.model_cache`, once per model)."""
    from pipelines import model_cache

    return model_cache.local_copy(uri, tracking_uri)
