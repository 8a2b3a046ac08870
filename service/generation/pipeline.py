"""What a pipeline is: a named list of stages, the event types it emits, and its run.

A pipeline is data plus one coroutine. The runner (runner.py) gives every pipeline the
same guarantees: each write is one transaction with its events (durable first, then
delivered), cancel and timeout end it, a restart ends it as `interrupted`, and its
assistant message is created at once and updated in place. The built-ins live in
service/pipelines/; an app's own pipeline comes from the entry-point group
`genstream.pipelines` (service/pipelines/__init__.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from service.config import GenerationSettings
from service.errors import Invalid
from service.eventlog.event import Draft
from service.eventlog.journal import Emit
from service.files import FileRecord
from service.generation.providers.base import Chunk, ModelRequest
from service.storage.interface import GenerationRow, Storage, Tx

T = TypeVar("T")

# A pipeline's name: what a submit's `pipeline` says and what the page shows.
NAME: Final = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# Event types a pipeline may emit without declaring them: the code pipeline's files and
# checks are a vocabulary any pipeline may write in (service/protocol.py).
SHARED_TYPES: Final = frozenset({"file.started", "file.delta", "file.completed", "validation"})
# Namespaces only the runner and the API write in: a pipeline declaring a type there
# could forge a generation's end, a message, or an app's event.
RESERVED: Final = ("generation.", "message.", "stream.", "app.")
RESERVED_TYPES: Final = frozenset({"stage", "generation", "message", "stream", "app"})
EVENT_TYPE: Final = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")
MAX_EVENT_TYPE: Final = 64
EMPTY_INPUTS: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class Stage:
    id: str
    label: str
    start: int  # progress (0-100) when the stage begins
    end: int  # progress when it is complete

    def at(self, fraction: float) -> int:
        """Overall progress at `fraction` (0.0-1.0) of the way through this stage."""
        fraction = min(max(fraction, 0.0), 1.0)
        return self.start + int((self.end - self.start) * fraction)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event type a pipeline emits, with the JSON Schema of its payload."""

    type: str
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a pipeline's run gives back: the assistant message's final text (None: the
    text it said), the files it wrote, a summary line, and `result`, carried by
    generation.completed for the client."""

    text: str | None = None
    files: Sequence[FileRecord] = ()
    summary: str | None = None
    result: Mapping[str, Any] | None = None


class Context(Protocol):
    """What a pipeline's run may do. Every write goes through the journal, checked to
    still hold the generation's lease where processes share the database."""

    @property
    def generation(self) -> GenerationRow: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def limits(self) -> GenerationSettings:
        """The caps on what one generation takes from its model (config [generation])."""
        ...

    @property
    def progress(self) -> int:
        """The generation's overall progress (0-100), as its last stage event said."""
        ...

    async def stage(self, stage_id: str, status: str = "active", fraction: float = 0.0) -> None:
        """Record that the stage is `active` (at `fraction` of its band) or `complete`:
        the generation row and a `stage` event, in one transaction, after what was sent."""
        ...

    def draft(self, type_: str, **payload: Any) -> Draft:
        """An event of this generation, to send or to emit inside transact()."""
        ...

    def send(self, *drafts: Draft) -> None:
        """Queue events, in order; committed in groups while the run goes on. A declared
        type's payload is checked against its schema first (ValueError if it fails)."""
        ...

    def emit(self, type_: str, **payload: Any) -> None:
        """send(draft(type_, **payload))."""
        ...

    def say(self, text: str) -> None:
        """Stream chat text: a message.delta of the assistant message."""
        ...

    async def flush(self) -> None:
        """Everything sent so far committed."""
        ...

    def model(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        """The provider's stream for `request`, whole characters, within the output caps."""
        ...

    async def transact(self, work: Callable[[Tx, Emit], Awaitable[T]]) -> T:
        """After flush(): `work` in one transaction with the events it emits."""
        ...


Run = Callable[[Context], Awaitable[Outcome]]


@dataclass(frozen=True)
class Pipeline:
    """A named, declared list of stages, the event types it emits, and its run.

    The stages' bands rise from 0 to 100; the last stage is the end (the runner records
    it complete at 100 with generation.completed). `inputs` is the JSON Schema of the
    submit's `inputs` object; `pending` the assistant message's text until it ends."""

    name: str
    label: str
    stages: tuple[Stage, ...]
    run: Run
    events: tuple[EventSpec, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_INPUTS))
    pending: str = "Working..."
    description: str = ""
    _validators: dict[str, Draft202012Validator] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError(f"pipeline {self.name!r}: " + "; ".join(problems))
        for spec in self.events:
            self._validators[spec.type] = Draft202012Validator(spec.schema)
        self._validators[""] = Draft202012Validator(self.inputs)

    @property
    def first(self) -> Stage:
        return self.stages[0]

    @property
    def last(self) -> Stage:
        return self.stages[-1]

    def stage(self, stage_id: str) -> Stage:
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise ValueError(f"pipeline {self.name!r} has no stage {stage_id!r}")

    def describe(self) -> list[dict[str, Any]]:
        """The stages as generation.started carries them."""
        return [{"id": stage.id, "label": stage.label} for stage in self.stages]

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Refuse inputs the pipeline's schema does not allow (a client's: untrusted)."""
        error = best_match(self._validators[""].iter_errors(inputs))
        if error is not None:
            where = "inputs" + "".join(f"[{part!r}]" for part in error.absolute_path)
            raise Invalid("invalid_inputs", f"{where}: {error.message}", field=where)

    def check_event(self, type_: str, payload: Mapping[str, Any]) -> None:
        """Refuse an event this pipeline may not emit, or whose payload its schema does
        not allow: a bug of the pipeline, which fails its run."""
        validator = self._validators.get(type_)
        if validator is None:
            if type_ in SHARED_TYPES:
                return
            raise ValueError(f"pipeline {self.name!r} does not declare event type {type_!r}")
        error = best_match(validator.iter_errors(payload))
        if error is not None:
            path = "".join(f"[{part!r}]" for part in error.absolute_path)
            raise ValueError(f"{type_} payload{path}: {error.message}")


def reserved(type_: str) -> bool:
    """A type only the runner or the API writes."""
    return type_ in RESERVED_TYPES or type_.startswith(RESERVED)


def _problems(pipeline: Pipeline) -> list[str]:
    found = []
    if not NAME.match(pipeline.name):
        found.append("its name must be lowercase letters, digits, - or _ (at most 40)")
    if not pipeline.stages:
        found.append("it declares no stage")
    ids = [stage.id for stage in pipeline.stages]
    if len(set(ids)) != len(ids):
        found.append("its stage ids repeat")
    previous = 0
    for stage in pipeline.stages:
        if not 0 <= stage.start <= stage.end <= 100 or stage.start < previous:
            found.append(f"stage {stage.id!r}: its band must rise within 0-100")
        previous = stage.end
    if pipeline.stages and pipeline.last.end != 100:
        found.append("its last stage must end at 100")
    types = [spec.type for spec in pipeline.events]
    if len(set(types)) != len(types):
        found.append("its event types repeat")
    for type_ in types:
        if not EVENT_TYPE.match(type_) or len(type_) > MAX_EVENT_TYPE:
            found.append(f"event type {type_!r} must be dotted lowercase words")
        elif reserved(type_) or type_ in SHARED_TYPES:
            found.append(f"event type {type_!r} is the service's own")
    for spec in pipeline.events:
        Draft202012Validator.check_schema(spec.schema)
    Draft202012Validator.check_schema(pipeline.inputs)
    return found
