"""The `scenes` pipeline: a video editor driven by chat.

The assistant message is created at once, pending, with its real id (the lifecycle's
submit). The model chooses one tool (scene_tools.py: add, edit, delete or trim a scene;
asked and answered offline by scene_brain.py), said as `scene.tool`; the tool's change
to the stored scene and its event (`scene.added`, `scene.edited`, `scene.trimmed`,
`scene.deleted`) are one transaction: durable first, then delivered, never half
applied. Then the model's chat answer streams as `message.delta`, and the runner updates
that same message to `success` with it; generation.completed carries `{tool, scene_id}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, replace
from typing import Final

from service.eventlog.event import now_ms
from service.eventlog.journal import Emit
from service.eventlog.schemas import exact
from service.generation.lifecycle import new_id
from service.generation.pipeline import Context, EventSpec, Outcome, Pipeline, Stage
from service.pipelines.replies import whole_reply
from service.pipelines.scene_brain import answer_request, decide_request, done_sentence
from service.pipelines.scene_tools import (
    ADD,
    CHOICE_EVENT,
    DELETE,
    DESCRIPTION,
    DURATION,
    EDIT,
    MAX_REPLY_CHARS,
    SCENE_ID,
    TITLE,
    TRIM,
    WHAT,
    Schema,
    ToolCall,
    parse_reply,
    target,
)
from service.storage.interface import SceneRow, Tx

DECIDING: Final = Stage("deciding", "Choosing an edit", 0, 20)
EDITING: Final = Stage("editing", "Editing the scenes", 20, 80)
ANSWERING: Final = Stage("answering", "Writing the answer", 80, 99)
COMPLETE: Final = Stage("complete", "Complete", 100, 100)

TOOL: Final = "scene.tool"
ADDED: Final = "scene.added"
EDITED: Final = "scene.edited"
TRIMMED: Final = "scene.trimmed"
DELETED: Final = "scene.deleted"
# The event each tool's change is told by.
CHANGED: Final = {ADD: ADDED, EDIT: EDITED, TRIM: TRIMMED, DELETE: DELETED}

_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
# A scene as its events and GET /api/projects/{pid}/scenes carry it (web/views.py scene).
SCENE: Final[Schema] = exact(
    {
        "id": SCENE_ID,
        "project_id": {"type": "string", "minLength": 1},
        "position": _COUNT,
        "title": TITLE,
        "description": DESCRIPTION,
        "duration_ms": DURATION,
        "created_at": _COUNT,
        "updated_at": _COUNT,
    }
)
_SCENE_EVENT: Final = exact({"scene": SCENE})
EVENTS: Final = (
    EventSpec(TOOL, CHOICE_EVENT, "The tool the model chose, with its arguments as checked."),
    EventSpec(ADDED, _SCENE_EVENT, "A scene was added (stored in this event's transaction)."),
    EventSpec(EDITED, _SCENE_EVENT, "A scene's title, description or duration changed."),
    EventSpec(TRIMMED, _SCENE_EVENT, "A scene was shortened."),
    EventSpec(DELETED, exact({"scene_id": SCENE_ID}), "A scene was deleted."),
)


async def run(ctx: Context) -> Outcome:
    generation = ctx.generation
    scenes = await ctx.storage.scenes(generation.project_id)
    request = decide_request(generation.prompt, scenes)
    reply = await whole_reply(ctx, request, what=WHAT, max_chars=MAX_REPLY_CHARS)
    call = parse_reply(reply, scenes, generation.project_id)
    ctx.emit(TOOL, tool=call.tool, arguments=dict(call.arguments))
    await ctx.stage(DECIDING.id, "complete")

    await ctx.stage(EDITING.id, "active")
    scene = await ctx.transact(_change(ctx, call, scenes))
    await ctx.stage(EDITING.id, "complete")

    await ctx.stage(ANSWERING.id, "active")
    done = done_sentence(call.tool, scene, await ctx.storage.scenes(generation.project_id))
    said = False
    async for chunk in ctx.model(answer_request(generation.prompt, done)):
        if chunk.text.strip():
            said = True
        ctx.say(chunk.text)
    if not said:  # a model that answered nothing: the message still says what was done
        ctx.say(done)
    await ctx.stage(ANSWERING.id, "complete")
    return Outcome(summary=done, result={"tool": call.tool, "scene_id": scene.id})


def _change(
    ctx: Context, call: ToolCall, scenes: Sequence[SceneRow]
) -> Callable[[Tx, Emit], Awaitable[SceneRow]]:
    """The tool's work, in the transaction of its event: the scene as stored (a deleted
    one as it was). The named scene is read again there, so what is changed is what
    the database holds, this project's (checked by scene_tools.target)."""
    project_id = ctx.generation.project_id
    arguments = call.arguments

    async def change(tx: Tx, emit: Emit) -> SceneRow:
        now = now_ms()
        if call.tool == ADD:
            position = max((s.position for s in scenes), default=0) + 1
            added = SceneRow(
                new_id("scn"),
                project_id,
                position,
                arguments["title"],
                arguments.get("description", ""),
                arguments["duration_ms"],
                now,
                now,
            )
            await tx.insert_scene(added)
            await emit(ctx.draft(ADDED, scene=asdict(added)))
            return added
        scene_id = call.scene_id
        assert scene_id is not None  # every tool but add names one (ARGUMENTS)
        stored = target(call, await tx.scene(scene_id), project_id)
        if call.tool == DELETE:
            await tx.delete_scene(scene_id)
            await emit(ctx.draft(DELETED, scene_id=scene_id))
            return stored
        changes = {k: v for k, v in arguments.items() if k != "scene_id"}
        changed = replace(stored, **changes, updated_at=now)
        await tx.update_scene(changed)
        await emit(ctx.draft(CHANGED[call.tool], scene=asdict(changed)))
        return changed

    return change


PIPELINE: Final = Pipeline(
    name="scenes",
    label="Scenes",
    description="A video editor driven by chat: each turn adds, edits, trims or deletes a scene.",
    stages=(DECIDING, EDITING, ANSWERING, COMPLETE),
    run=run,
    events=EVENTS,
    pending="Editing the scenes...",
)
