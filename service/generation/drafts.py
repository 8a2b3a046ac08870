"""A generation's events as drafts: the parser's items, a stage, a message created or
updated. Only drafts: the journal gives them ids and commits them."""

from __future__ import annotations

from dataclasses import asdict

from service.eventlog import event as ev
from service.eventlog.event import Draft
from service.files import FileRecord
from service.generation.parser import (
    FileCompleted,
    FileDelta,
    FileRejected,
    FileStarted,
    Item,
    TextDelta,
)
from service.generation.pipeline import Stage
from service.generation.run import Run
from service.storage.interface import MessageRow


def from_items(run: Run, items: list[Item]) -> list[Draft]:
    """The parser's items as drafts; a completed file is also kept in the run's files."""
    drafts: list[Draft] = []
    for item in items:
        if isinstance(item, TextDelta):
            drafts.append(
                run.draft(ev.MESSAGE_DELTA, message_id=run.assistant_message_id, delta=item.text)
            )
        elif isinstance(item, FileStarted):
            replaces = item.path in run.existing or item.path in run.files
            drafts.append(run.draft(ev.FILE_STARTED, path=item.path, replaces=replaces))
        elif isinstance(item, FileDelta):
            drafts.append(run.draft(ev.FILE_DELTA, path=item.path, delta=item.text, line=item.line))
        elif isinstance(item, FileCompleted):
            run.files[item.path] = FileRecord(item.path, item.content, item.size, item.sha256)
            drafts.append(
                run.draft(ev.FILE_COMPLETED, path=item.path, size=item.size, sha256=item.sha256)
            )
            if not item.closed:
                # Kept, but said: a model cut off (max_tokens) leaves its last file short.
                detail = "the model stopped before </file>: the file may be cut short"
                drafts.append(
                    run.draft(
                        ev.VALIDATION, check="closed", ok=False, detail=detail, path=item.path
                    )
                )
        elif isinstance(item, FileRejected):
            drafts.append(
                run.draft(ev.VALIDATION, check="path", ok=False, detail=item.reason, path=item.path)
            )
    return drafts


def message_created(message: MessageRow) -> Draft:
    """message.created carries the whole row, in the shape the messages API returns."""
    return Draft(
        message.project_id,
        message.generation_id,
        ev.MESSAGE_CREATED,
        {"message": asdict(message)},
        message.created_at,
    )


def message_updated(run: Run, status: str, content: str) -> Draft:
    """The run's assistant message now has this status and content."""
    message = {"id": run.assistant_message_id, "status": status, "content": content}
    return run.draft(ev.MESSAGE_UPDATED, message=message)


def stage(run: Run, stage: Stage, status: str, progress: int) -> Draft:
    return run.draft(ev.STAGE, stage=stage.id, label=stage.label, status=status, progress=progress)
