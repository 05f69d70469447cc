"""CPU, memory, disk, network (and GPU) usage logged to a run as ``system/...`` metrics.

MLflow's own ``SystemMetricsMonitor`` samples on a background thread (psutil;
GPUs through nvidia-ml-py, when installed) and logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_utilization_percentage``
and so on, step = sample number. esc_sweep starts one per CV run
(``tracking.system_metrics``, on by default) because it logs through
``MlflowClient``, not ``mlflow.start_run``, where MLflow would start it.

The samples go to a child of the CV run named "system metrics" (tag ``esc_sweep.role=system``),
not to the CV run itself. MLflow lists a run's metrics in the order they were first logged, and
its compare page plots the first one: sampled from the first seconds on, ``system/cpu_...`` would
lead every comparison of CV runs, whose accuracy is logged only at the end.

One sample every ``SAMPLING_INTERVAL_S`` seconds: the cost is one psutil call
and one small write, and stopping never waits for it. MLflow logs only whole
intervals, so a run shorter than one would have no system metrics: ``stop``
takes one last sample of the time since the last one and logs it.
"""

from __future__ import annotations

import logging
from typing import Optional

from esc_sweep.tracking.client import PARENT_TAG, ROLE_TAG

log = logging.getLogger(__name__)

SAMPLING_INTERVAL_S = 10.0
PREFIX = "system/"


class SystemMetrics:
    """Samples the machine while a run trains; ``start`` and ``stop`` never raise."""

    def __init__(self, run_id: str, tracking_uri: str, resume: bool = False,
                 interval: float = SAMPLING_INTERVAL_S):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.resume = resume
        self.interval = interval
        self.monitor = None
        self._first_step = 0

    def start(self) -> "SystemMetrics":
        try:
            # deferred: MLflow's system metrics monitor (psutil, pynvml; seconds), only when enabled
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            for name in ("mlflow.system_metrics", "mlflow.system_metrics.system_metrics_monitor"):
                logging.getLogger(name).setLevel(logging.WARNING)  # "Started monitoring..." at INFO
            # resume_logging: a resumed run's samples continue after the interrupted attempt's steps.
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval,
                                                resume_logging=self.resume, tracking_uri=self.tracking_uri)
            self._first_step = self.monitor._logging_step
            self.monitor.start()
        except Exception as err:  # psutil missing, an odd platform: the run goes on without them
            log.warning("MLflow system metrics are off for this run: %s", err)
            self.monitor = None
        return self

    def stop(self) -> None:
        """Stop sampling and log what the last (partial) interval saw. Call before the run ends."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()  # wakes the sampling thread at once, joins it, flushes
            if monitor._logging_step == self._first_step:
                # Nothing logged yet (a short run): the start-up sample has no CPU figure (psutil
                # measures between two calls), so log one sample covering the whole run instead.
                for each in monitor.monitors:
                    each.clear_metrics()
            monitor.collect_metrics()
            metrics = monitor.aggregate_metrics()
            if metrics:
                monitor.publish_metrics(metrics)
                monitor.mlflow_logger.flush()
        except Exception as err:  # never let bookkeeping hide the run's own result
            log.warning("MLflow system metrics: could not log the last sample: %s", err)


SYSTEM_RUN_NAME = "system metrics"
SYSTEM_ROLE = "system"


def system_run(client, experiment_id: str, parent_run_id: str, tags: dict[str, str]) -> str:
    """The CV run's "system metrics" child: the one an interrupted attempt left, or a new one."""
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ROLE_TAG}` = '{SYSTEM_ROLE}'"))
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {**tags, PARENT_TAG: parent_run_id, ROLE_TAG: SYSTEM_ROLE}
    return client.create_run(experiment_id, tags=tags, run_name=SYSTEM_RUN_NAME).info.run_id


def start_system_metrics(run_id: str, tracking_uri: str, enabled: bool, resume: bool = False,
                         interval: float = SAMPLING_INTERVAL_S) -> Optional[SystemMetrics]:
    """A started sampler for ``run_id``, or None when ``tracking.system_metrics`` is off."""
    if not enabled:
        return None
    return SystemMetrics(run_id, tracking_uri, resume=resume, interval=interval).start()
