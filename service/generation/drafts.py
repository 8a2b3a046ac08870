"""A generation's events as drafts: a stage, a message created or updated. Only drafts:
the journal gives them ids and commits them."""

from __future__ import annotations

from dataclasses import asdict

from service.eventlog import event as ev
from service.eventlog.event import Draft
from service.generation.pipeline import Stage
from service.generation.run import Run
from service.storage.interface import MessageRow


def message_created(message: MessageRow) -> Draft:
    """message.created carries the whole row, in the shape the messages API returns."""
    return Draft(
        message.project_id,
        message.generation_id,
        ev.MESSAGE_CREATED,
        {"message": asdict(message)},
        message.created_at,
    )


def message_delta(run: Run, text: str) -> Draft:
    """Chat text of the run's assistant message."""
    return run.draft(ev.MESSAGE_DELTA, message_id=run.assistant_message_id, delta=text)


def message_updated(run: Run, status: str, content: str) -> Draft:
    """The run's assistant message now has this status and content."""
    message = {"id": run.assistant_message_id, "status": status, "content": content}
    return run.draft(ev.MESSAGE_UPDATED, message=message)


def stage(run: Run, stage: Stage, status: str, progress: int) -> Draft:
    return run.draft(ev.STAGE, stage=stage.id, label=stage.label, status=status, progress=progress)
