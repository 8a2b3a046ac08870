"""The pipelines a server runs: the built-ins and those of installed packages.

A package adds its own through the entry-point group `genstream.pipelines`: each entry
names a `Pipeline` (service.generation.pipeline), or a callable that returns one, e.g.
in its pyproject.toml:

    [project.entry-points."genstream.pipelines"]
    quiz = "myapp.quiz:PIPELINE"

Everything a pipeline author needs is re-exported here; `RunFailed(code, message,
retryable)` ends a run as failed with the pipeline's own error code (a model reply that
makes no sense, say), as generation.failed carries it. A pipeline that cannot load,
or clashes with another (its name, an event type), stops the server at start with an
error naming it: a pipeline silently missing would fail its users' submits instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Final

from service.eventlog.schemas import exact
from service.generation.pipeline import Context, EventSpec, Outcome, Pipeline, Stage
from service.generation.providers.base import Chunk, ModelRequest
from service.generation.providers.base import ProviderError as RunFailed
from service.pipelines import code, page, scenes

__all__ = [
    "GROUP",
    "Chunk",
    "Context",
    "EventSpec",
    "ModelRequest",
    "Outcome",
    "Pipeline",
    "PipelineError",
    "RunFailed",
    "Stage",
    "builtins",
    "exact",
    "load_pipelines",
]

GROUP: Final = "genstream.pipelines"


class PipelineError(Exception):
    """A pipeline that cannot be loaded or clashes with another: the server cannot start."""


def builtins() -> list[Pipeline]:
    return [code.PIPELINE, page.PIPELINE, scenes.PIPELINE]


def load_pipelines(found: Iterable[EntryPoint] | None = None) -> dict[str, Pipeline]:
    """Every pipeline by name: the built-ins, then the entry points of GROUP."""
    pipelines: dict[str, Pipeline] = {}
    owners: dict[str, str] = {}  # event type -> the pipeline that declares it
    for pipeline in builtins():
        _add(pipelines, owners, pipeline, "built in")
    for point in entry_points(group=GROUP) if found is None else found:
        _add(pipelines, owners, _load(point), f"entry point {point.name!r} ({point.value})")
    return pipelines


def _load(point: EntryPoint) -> Pipeline:
    where = f"entry point {point.name!r} of {GROUP} ({point.value})"
    try:
        loaded = point.load()
        pipeline = loaded() if callable(loaded) and not isinstance(loaded, Pipeline) else loaded
    except Exception as exc:
        raise PipelineError(f"{where} could not be loaded: {exc}") from exc
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(f"{where} gave {type(pipeline).__name__}, not a Pipeline")
    return pipeline


def _add(
    pipelines: dict[str, Pipeline], owners: dict[str, str], pipeline: Pipeline, where: str
) -> None:
    if pipeline.name in pipelines:
        raise PipelineError(f"pipeline {pipeline.name!r} ({where}) is already defined")
    for spec in pipeline.events:
        if spec.type in owners:
            raise PipelineError(
                f"pipeline {pipeline.name!r} ({where}) declares event type {spec.type!r}, "
                f"already declared by pipeline {owners[spec.type]!r}"
            )
        owners[spec.type] = pipeline.name
    pipelines[pipeline.name] = pipeline
