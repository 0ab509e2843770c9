"""The evaluation runner on Ray: samples spread over worker processes, rows written by the driver alone.

Each worker is a Ray actor that loads the model once (``load_model()`` runs in the worker, so every
node loads its own copy) and evaluates whole samples with ``runner.evaluate_sample``, exactly as the
serial runner does. The driver keeps the only (locked) handle on the results file: it appends a sample's rows
as soon as the sample comes back, in completion order, so a crash or Ctrl-C loses at most the samples
in flight and a restart resumes as the serial runner does (same fingerprint, same skipping).

Without ``address`` a local cluster of ``workers`` CPUs is started and shut down afterwards; with an
address (``"auto"``, ``"ray://head:10001"``) the run joins that cluster and leaves it running.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, SpanTraceError
from .prompts import Sample
from .results import ResultsFile
from .runner import EvalConfig, config_samples, evaluate_sample, pending, results_for

if TYPE_CHECKING:
    from ..api import Model


class EvalWorker:
    """One Ray actor: a model of its own, and the two calls the driver makes."""

    def __init__(self, load_model: Callable[[], Model]) -> None:
        self.model = load_model()

    def samples(self, config: EvalConfig) -> list[Sample]:
        return config_samples(config, self.model.tokenizer)

    def evaluate(self, sample: Sample, config: EvalConfig, methods: list[str]) -> list[dict[str, Any]]:
        return list(evaluate_sample(self.model, sample, config, methods))


def run_eval_ray(
    load_model: Callable[[], Model],
    config: EvalConfig,
    out: Path | str | ResultsFile,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> ResultsFile:
    """``runner.run_eval`` with each sample a task on one of ``workers`` Ray actors.

    load_model: a picklable zero-argument callable that returns the ``Model`` (run once per worker).
    workers: actors to start (default: every CPU of the cluster). Rows are the serial runner's rows;
    only their order (completion order) and the timing and memory columns can differ.
    """
    ray = _import_ray()
    if workers is not None and workers < 1:
        raise InputError(f"workers must be ≥ 1; got {workers}")
    with results_for(config, out) as results:  # locked before the cluster starts: one writer per file
        started = not ray.is_initialized()
        if started:
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        try:
            return _drive(ray, load_model, config, results, workers, gpus_per_worker, on_row)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, SpanTraceError):  # a user error met in a worker: say it as serial runs do
                raise error.cause from None
            raise
        finally:
            if started:
                ray.shutdown()


def _drive(
    ray: Any,
    load_model: Callable[[], Model],
    config: EvalConfig,
    results: ResultsFile,
    workers: int | None,
    gpus_per_worker: float,
    on_row: Callable[[dict[str, Any]], None] | None,
) -> ResultsFile:
    """Start the actors, hand out the pending samples one per idle actor, and append rows as they come back."""
    actors: list[Any] = []
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        worker = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(EvalWorker)
        actors = [worker.remote(load_model) for _ in range(count)]
        work = pending(ray.get(actors[0].samples.remote(config)), config, results.done())
        in_flight = {}
        queue = list(reversed(work))
        for actor in actors:  # one sample per actor at a time; the next goes to whichever finishes first
            if queue:
                sample, todo = queue.pop()
                in_flight[actor.evaluate.remote(sample, config, todo)] = actor
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready)
            if queue:
                sample, todo = queue.pop()
                in_flight[actor.evaluate.remote(sample, config, todo)] = actor
            for row in ray.get(ready):
                results.append(row)
                if on_row is not None:
                    on_row(row)
    finally:
        for actor in actors:
            ray.kill(actor)
    return results


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise InputError("--ray needs Ray: pip install 'spantrace[ray]'") from error
    return ray
