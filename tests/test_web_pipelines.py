"""The built-in web page renders any pipeline (issue 14 item 5), in a real headless
Chromium against a real server: the stepper shows the chosen pipeline's declared stages,
a page pipeline's sections are drawn as they arrive (as text, never HTML), a scenes
pipeline's scenes are a list updated in place, and app events show in the console.

The pipelines here are the test's own, with the event types the page draws (page.section
and page, scene.*): a run that waits on the test between sections shows the preview
section by section without a sleep, and hostile headings and titles come from the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from playwright.async_api import Page, expect

from service.eventlog.event import Event, now_ms
from service.eventlog.journal import Emit
from service.generation.lifecycle import new_id
from service.generation.pipeline import Context, EventSpec, Outcome, Pipeline, Stage
from service.pipelines import code
from service.storage.interface import SceneRow, Tx
from service.web import views
from tests import test_web_page
from tests.browser import requires_chromium
from tests.conftest import Genstream, MakeServer
from tests.test_web_page import ARTIFACTS, WAIT_MS, PageFactory, assistant, send

pytestmark = requires_chromium
# The browser page tests' fixtures (a Chromium; a page that fails the test on a script
# error), shared by name.
browser = test_web_page.browser
new_page = test_web_page.new_page

WAIT_S: Final = WAIT_MS / 1000
HOSTILE: Final = '<img src=x onerror="window.__pwned = 1">'
STEPS_JS: Final = """() => [...document.querySelectorAll("#stepper .step")].map((step) => ({
  id: step.dataset.stage,
  label: step.querySelector(".label").textContent,
  status: step.dataset.status,
}))"""
SECTIONS_JS: Final = """() => [...document.querySelectorAll("#preview-sections .preview-section")]
  .map((node) => ({
    index: Number(node.dataset.index),
    kind: node.dataset.kind,
    heading: node.querySelector(".heading").textContent,
    body: node.querySelector(".body")?.textContent ?? "",
    items: [...node.querySelectorAll(".items > *")].map((item) => item.textContent),
  }))"""
SCENES_JS: Final = """() => [...document.querySelectorAll("#scene-list li.scene")].map((li) => ({
  id: li.dataset.sceneId,
  title: li.querySelector(".title").textContent,
  description: li.querySelector(".description").textContent,
}))"""
# Every element the page's model-written parts hold: tags other than these would be HTML
# the page parsed out of an event.
DRAWN_TAGS_JS: Final = """(selector) => [...new Set([...document.querySelectorAll(selector + " *")]
  .map((node) => node.tagName))].sort()"""


def exact(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


TEXT: Final = {"type": "string"}
SECTION: Final = exact(
    {
        "kind": {"enum": ["hero", "features", "faq", "cta", "text"]},
        "heading": TEXT,
        "body": TEXT,
        "items": {"type": "array", "items": TEXT},
    }
)
SCENE: Final = exact(
    {
        "id": TEXT,
        "project_id": TEXT,
        "position": {"type": "integer"},
        "title": TEXT,
        "description": TEXT,
        "duration_ms": {"type": "integer"},
        "created_at": {"type": "integer"},
        "updated_at": {"type": "integer"},
    }
)


class Gate:
    """Lets a run take its next step when the test says: the page is seen between steps."""

    def __init__(self) -> None:
        self._steps: asyncio.Queue[None] = asyncio.Queue()

    def open(self) -> None:
        self._steps.put_nowait(None)

    async def passed(self) -> None:
        await asyncio.wait_for(self._steps.get(), WAIT_S)


def section(kind: str, heading: str, body: str = "", items: Sequence[str] = ()) -> dict[str, Any]:
    return {"kind": kind, "heading": heading, "body": body, "items": list(items)}


SECTIONS: Final = [
    section("hero", "Ship faster", "Everything your team needs."),
    section("features", "Why us", "Three reasons.", ["Fast", "Safe", "Cheap"]),
    section("faq", "Questions", "", ["Is it free? Yes."]),
    section("cta", "Start today", "No card needed.", ["Sign up", "Talk to sales"]),
]
LANDING_STAGES: Final = (
    Stage("asking", "Reading the question", 0, 40),
    Stage("building", "Building the page", 40, 95),
    Stage("complete", "Complete", 100, 100),
)
STORYBOARD_STAGES: Final = (
    Stage("deciding", "Choosing an edit", 0, 20),
    Stage("editing", "Editing the scenes", 20, 90),
    Stage("complete", "Complete", 100, 100),
)


def landing(
    sections: Sequence[dict[str, Any]] = SECTIONS, title: str = "Acme", gate: Gate | None = None
) -> Pipeline:
    """A page pipeline: each section as a page.section event (after the gate, if any),
    then the whole page, then its answer."""

    async def run(ctx: Context) -> Outcome:
        await ctx.stage("asking", "complete")
        await ctx.stage("building", "active", 0.0)
        for index, each in enumerate(sections):
            if gate is not None:
                await gate.passed()
            ctx.emit("page.section", index=index, section=each)
            await ctx.flush()
        if gate is not None:
            await gate.passed()
        page = {"title": title, "sections": list(sections)}
        ctx.emit("page", page=page)
        ctx.say("Here is your page.")
        await ctx.stage("building", "complete")
        return Outcome(result={"page": page})

    return Pipeline(
        name="landing",
        label="Landing page",
        stages=LANDING_STAGES,
        run=run,
        events=(
            EventSpec("page.section", exact({"index": {"type": "integer"}, "section": SECTION})),
            EventSpec(
                "page",
                exact({"page": exact({"title": TEXT, "sections": {"type": "array"}})}),
            ),
        ),
        inputs={
            "type": "object",
            "properties": {"visitor_id": {"type": "string", "minLength": 1, "maxLength": 128}},
            "additionalProperties": False,
        },
        pending="Thinking...",
    )


async def storyboard_run(ctx: Context) -> Outcome:
    """A scenes pipeline driven by the prompt: `add TITLE`, `rename N TITLE`, `trim N MS`,
    `delete N` (N: the scene's position, from 1); each edit stored with its event."""
    await ctx.stage("deciding", "complete")
    await ctx.stage("editing", "active", 0.0)
    generation = ctx.generation
    verb, _, rest = generation.prompt.partition(" ")
    scenes = await ctx.storage.scenes(generation.project_id)
    at = now_ms()

    async def edit(tx: Tx, emit: Emit) -> Event:
        if verb == "add":
            row = SceneRow(
                new_id("scn"),
                generation.project_id,
                len(scenes),
                rest,
                f"About {rest}",
                4000,
                at,
                at,
            )
            await tx.insert_scene(row)
            return await emit(ctx.draft("scene.added", scene=views.scene(row)))
        number, _, argument = rest.partition(" ")
        known = scenes[int(number) - 1]
        if verb == "delete":
            await tx.delete_scene(known.id)
            return await emit(ctx.draft("scene.deleted", scene_id=known.id))
        if verb == "trim":
            row = dataclasses.replace(known, duration_ms=int(argument), updated_at=at)
            await tx.update_scene(row)
            return await emit(ctx.draft("scene.trimmed", scene=views.scene(row)))
        row = dataclasses.replace(known, title=argument, updated_at=at)
        await tx.update_scene(row)
        return await emit(ctx.draft("scene.edited", scene=views.scene(row)))

    await ctx.transact(edit)
    ctx.say(f"Done: {verb}.")
    await ctx.stage("editing", "complete")
    return Outcome()


STORYBOARD: Final = Pipeline(
    name="storyboard",
    label="Storyboard",
    stages=STORYBOARD_STAGES,
    run=storyboard_run,
    events=(
        EventSpec("scene.added", exact({"scene": SCENE})),
        EventSpec("scene.edited", exact({"scene": SCENE})),
        EventSpec("scene.trimmed", exact({"scene": SCENE})),
        EventSpec("scene.deleted", exact({"scene_id": TEXT})),
    ),
    pending="Editing the scenes...",
)


# The app events the tests publish, declared ([events] schemas): a browser's EventSource
# hands on only the named events it listens to, and the page listens to the types
# GET /api/events/schemas names.
APP_EVENTS: Final = {
    "app.note": {"type": "object"},
    "app.typing": exact({"user": TEXT, "typing": {"type": "boolean"}}),
    "app.job.progress": {"type": "object", "required": ["job"]},
}


def declared_app_events(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "app-events.json"
    path.write_text(json.dumps(APP_EVENTS))
    return {"schemas": str(path)}


def pipelines(*extra: Pipeline) -> dict[str, Pipeline]:
    return {p.name: p for p in (code.PIPELINE, *extra)}


async def declared(gs: Genstream, name: str) -> list[dict[str, str]]:
    """The pipeline's stages as GET /api/pipelines lists them, as the stepper shows them."""
    listed = await gs.json("GET", "/api/pipelines")
    (pipeline,) = [p for p in listed["pipelines"] if p["name"] == name]
    return [{"id": s["id"], "label": s["label"]} for s in pipeline["stages"]]


async def expect_steps(page: Page, stages: list[dict[str, str]], status: str | None) -> None:
    """Wait until the stepper shows exactly these stages (all with `status`, if given)."""
    await page.wait_for_function(
        f"""([stages, status]) => JSON.stringify(({STEPS_JS})().map(
              (step) => ({{ id: step.id, label: step.label }}))) === JSON.stringify(stages)
            && (status === null || ({STEPS_JS})().every((step) => step.status === status))""",
        arg=[stages, status],
    )


async def open_project(
    new_page: PageFactory, gs: Genstream, name: str, query: str = ""
) -> tuple[Page, str]:
    project_id = await gs.new_project(name)
    page = await new_page(f"{gs.url}/?project={project_id}{query}")
    await expect(page.locator("body")).to_have_attribute("data-project", project_id)
    return page, project_id


async def test_the_stepper_shows_the_chosen_pipelines_declared_stages(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(offline={"tokens_per_second": 400}, pipelines=pipelines(landing()))
    page, project_id = await open_project(new_page, gs, "stepper")
    code_stages = await declared(gs, "code")
    landing_stages = await declared(gs, "landing")
    assert [s["id"] for s in landing_stages] == ["asking", "building", "complete"]

    # Idle: the default pipeline's stages, and a chooser of every pipeline listed.
    await expect_steps(page, code_stages, "todo")
    options = await page.locator("#pipeline-select option").evaluate_all(
        "options => options.map((option) => option.value)"
    )
    assert options == ["code", "landing"]
    await page.select_option("#pipeline-select", "landing")
    await expect_steps(page, landing_stages, "todo")
    # The landing pipeline's one input: this browser's own visitor id, kept across pages.
    visitor = page.locator('#pipeline-inputs input[data-field="visitor_id"]')
    await expect(visitor).to_have_value(re.compile(r"^visitor-[0-9a-f]{16}$"))
    visitor_id = await visitor.input_value()

    await send(page, "a page for Acme")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_steps(page, landing_stages, "done")
    await expect(page.locator("#percent")).to_have_text("100%")
    stored = await gs.events(project_id)
    (started,) = [e for e in stored if e["type"] == "generation.started"]
    assert started["pipeline"] == "landing"
    assert [s["id"] for s in started["stages"]] == [s["id"] for s in landing_stages]
    generation = await gs.json("GET", f"/api/generations/{started['generation_id']}")
    assert generation["inputs"] == {"visitor_id": visitor_id}
    # Each stage the page showed active was one the generation recorded, in order.
    stages = [e["stage"] for e in stored if e["type"] == "stage"]
    assert stages and set(stages) <= {s["id"] for s in landing_stages}

    # Choosing another pipeline shows its stages; back, the ended generation again.
    await page.select_option("#pipeline-select", "code")
    await expect_steps(page, code_stages, "todo")
    await expect(page.locator("#pipeline-inputs input")).to_have_count(0)
    await page.select_option("#pipeline-select", "landing")
    await expect_steps(page, landing_stages, "done")

    # A reload starts on the pipeline the project ran last, with the same visitor id.
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await expect(page.locator("#pipeline-select")).to_have_value("landing")
    await expect_steps(page, landing_stages, "done")
    await expect(visitor).to_have_value(visitor_id)

    # The code pipeline: its four stages while it runs.
    await page.select_option("#pipeline-select", "code")
    await send(page, "a todo api")
    await expect(page.locator("#stepper .step[data-status=active]")).to_have_attribute(
        "data-stage", "generating"
    )
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_steps(page, code_stages, "done")


async def test_an_idle_project_shows_its_default_pipelines_stages(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(pipelines=pipelines(landing()), generation={"pipeline": "landing"})
    page, project_id = await open_project(new_page, gs, "default")
    await expect(page.locator("#pipeline-select")).to_have_value("landing")
    await expect_steps(page, await declared(gs, "landing"), "todo")
    # A generation another client submits with no pipeline runs the default: the stepper
    # follows it from its first event.
    submitted = await gs.generate(project_id, "a page")
    assert submitted["generation"]["pipeline"] == "landing"
    await expect(page.locator("#messages li.message.assistant")).to_have_attribute(
        "data-status", "success"
    )
    await expect_steps(page, await declared(gs, "landing"), "done")


async def test_the_preview_draws_the_page_section_by_section_as_it_arrives(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gate = Gate()
    gs = await make_server(pipelines=pipelines(landing(gate=gate)))
    page, project_id = await open_project(new_page, gs, "preview")
    preview = page.locator("#preview")
    await expect(preview).to_be_hidden()
    await page.select_option("#pipeline-select", "landing")
    await send(page, "a page for Acme")
    await expect(page.locator("#stepper .step[data-status=active]")).to_have_attribute(
        "data-stage", "building"
    )
    # The assistant message, pending: the pipeline's own pending text.
    await expect(assistant(page).locator(".body")).to_have_text("Thinking...")

    drawn = page.locator("#preview-sections .preview-section")
    for index, each in enumerate(SECTIONS):
        gate.open()
        # This section is drawn, and no other: the next one is not sent yet.
        await expect(drawn).to_have_count(index + 1)
        await expect(drawn.nth(index).locator(".heading")).to_have_text(each["heading"])
        await expect(preview).to_have_attribute("data-complete", "false")
        if index == 0:
            await drawn.first.evaluate("(node) => { window.__hero = node; }")
    gate.open()
    await expect(preview).to_have_attribute("data-complete", "true")
    await expect(page.locator("#preview-title")).to_have_text("Acme")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    expected = [
        {
            "index": i,
            "kind": s["kind"],
            "heading": s["heading"],
            "body": s["body"],
            "items": s["items"],
        }
        for i, s in enumerate(SECTIONS)
    ]
    assert await page.evaluate(SECTIONS_JS) == expected
    # The whole page's event did not redraw the sections it repeats.
    assert await drawn.first.evaluate("(node) => node === window.__hero")
    # What the log holds, as the page drew it.
    stored = await gs.events(project_id)
    (whole,) = [e for e in stored if e["type"] == "page"]
    assert whole["page"]["sections"] == SECTIONS

    # Reloaded, the ended generation's events draw the page again.
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await expect(preview).to_have_attribute("data-complete", "true")
    assert await page.evaluate(SECTIONS_JS) == expected


async def test_model_written_page_and_scene_text_shows_as_text_and_runs_nothing(
    tmp_path: Path, make_server: MakeServer, new_page: PageFactory
) -> None:
    hostile = [
        section("hero", HOSTILE, "<script>window.__pwned = 2</script>"),
        section("features", "<b>bold</b>", "", ['<a href="javascript:window.__pwned=3">x</a>']),
        section("cta", "<style>body{display:none}</style>", "", [HOSTILE]),
    ]
    title = "<iframe src=javascript:window.__pwned=4></iframe>"
    gs = await make_server(
        pipelines=pipelines(landing(hostile, title), STORYBOARD),
        events=declared_app_events(tmp_path),
    )
    page, project_id = await open_project(new_page, gs, "xss", "&debug=true")
    await page.select_option("#pipeline-select", "landing")
    await send(page, "a page")
    await expect(page.locator("#preview")).to_have_attribute("data-complete", "true")
    await expect(page.locator("#preview-title")).to_have_text(title)
    shown = await page.evaluate(SECTIONS_JS)
    assert [(s["heading"], s["body"], s["items"]) for s in shown] == [
        (s["heading"], s["body"], s["items"]) for s in hostile
    ]

    await page.select_option("#pipeline-select", "storyboard")
    await send(page, f"add {HOSTILE}")
    await expect(page.locator("#scene-list li.scene .title")).to_have_text(HOSTILE)
    # App events too: the console shows what an app published as text.
    await gs.json(
        "POST",
        f"/api/projects/{project_id}/events",
        status=201,
        json={"type": "app.note", "data": {"html": HOSTILE}},
    )
    await expect(page.locator('#debug-events li[data-type="app.note"] .app-data')).to_have_text(
        json.dumps({"html": HOSTILE}, separators=(",", ":"))
    )

    # Only the page's own elements: nothing an event said became one.
    assert await page.evaluate(DRAWN_TAGS_JS, "#preview") == [
        "DIV", "H2", "H3", "H4", "LI", "P", "SECTION", "SPAN", "UL",
    ]  # fmt: skip
    assert await page.evaluate(DRAWN_TAGS_JS, "#scenes") == [
        "DIV", "H2", "LI", "OL", "P", "SPAN", "STRONG",
    ]  # fmt: skip
    hostile_tags = ":is(img, iframe, script, b, a, style)"
    assert await page.locator(f"main {hostile_tags}, #debug {hostile_tags}").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.evaluate("getComputedStyle(document.body).display") != "none"


async def test_scenes_are_a_list_updated_in_place(
    make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(pipelines=pipelines(STORYBOARD))
    page, project_id = await open_project(new_page, gs, "scenes")
    scenes = page.locator("#scene-list li.scene")
    await expect(page.locator("#scenes")).to_be_hidden()
    await page.select_option("#pipeline-select", "storyboard")
    await expect(page.locator("#scenes-empty")).to_be_visible()

    async def edit(prompt: str) -> None:
        before = await page.locator("#messages li.message.assistant").count()
        await send(page, prompt)
        await expect(page.locator("#messages li.message.assistant")).to_have_count(before + 1)
        await expect(assistant(page)).to_have_attribute("data-status", "success")

    async def expect_scenes_as_stored() -> list[dict[str, Any]]:
        stored = (await gs.json("GET", f"/api/projects/{project_id}/scenes"))["scenes"]
        expected = [
            {"id": s["id"], "title": s["title"], "description": s["description"]} for s in stored
        ]
        await page.wait_for_function(
            f"(expected) => JSON.stringify(({SCENES_JS})()) === JSON.stringify(expected)",
            arg=expected,
        )
        return list(stored)

    await edit("add Sunrise")
    await edit("add Harbour")
    await edit("add Night")
    first, second, third = await expect_scenes_as_stored()
    await expect(scenes).to_have_count(3)
    await scenes.nth(1).evaluate("(node) => { window.__second = node; }")

    await edit("rename 2 Harbour at dawn")
    await expect(scenes.nth(1).locator(".title")).to_have_text("Harbour at dawn")
    await edit("trim 2 1500")
    await expect(scenes.nth(1).locator(".length")).to_have_text("1.50 s")
    # The same element all along: edited in place, not redrawn.
    assert await scenes.nth(1).evaluate("(node) => node === window.__second")
    assert await scenes.nth(1).get_attribute("data-scene-id") == second["id"]

    # Another client's edit reaches the open page the same way.
    submitted = await gs.generate(project_id, "delete 1", pipeline="storyboard")
    await gs.wait_generation(submitted["generation"]["id"])
    await expect(scenes).to_have_count(2)
    assert await scenes.first.evaluate("(node) => node === window.__second")
    after = await expect_scenes_as_stored()
    assert [s["id"] for s in after] == [second["id"], third["id"]]
    assert first["id"] not in [s["id"] for s in after]
    stored = await gs.events(project_id)
    assert [e["type"] for e in stored if e["type"].startswith("scene.")] == [
        "scene.added", "scene.added", "scene.added", "scene.edited", "scene.trimmed",
        "scene.deleted",
    ]  # fmt: skip

    # A reload takes the list from GET /api/projects/{pid}/scenes.
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]")
    await expect(scenes).to_have_count(2)
    await expect_scenes_as_stored()


async def test_app_events_show_in_the_developer_console(
    tmp_path: Path, make_server: MakeServer, new_page: PageFactory
) -> None:
    gs = await make_server(events=declared_app_events(tmp_path))
    page, project_id = await open_project(new_page, gs, "app events", "&debug=true")
    await expect(page.locator("#debug-connection")).to_have_text("Live")
    published = [
        {"type": "app.typing", "data": {"user": "ada", "typing": True}},
        {"type": "app.job.progress", "data": {"job": "export", "done": 3, "of": 10}},
        {"type": "app.typing", "data": {"user": "ada", "typing": False}},
    ]
    answers = [
        await gs.json("POST", f"/api/projects/{project_id}/events", status=201, json=body)
        for body in published
    ]
    rows = page.locator("#debug-events li.event.app")
    await expect(rows).to_have_count(len(published))
    shown = await rows.evaluate_all(
        """rows => rows.map((row) => ({
          id: Number(row.dataset.id),
          type: row.dataset.type,
          data: JSON.parse(row.querySelector(".app-data").textContent),
        }))"""
    )
    assert shown == [
        {"id": answer["id"], "type": body["type"], "data": body["data"]}
        for answer, body in zip(answers, published, strict=True)
    ]
    # The row opens on the event as stored.
    await rows.nth(1).locator("summary").click()
    opened = json.loads(await rows.nth(1).locator("pre.json").text_content() or "")
    stored = await gs.events(project_id)
    assert opened == next(e for e in stored if e["id"] == answers[1]["id"])
    await expect(page.locator("#debug-count")).to_have_text(f"({len(stored)})")


async def test_the_built_in_page_and_scenes_pipelines_in_the_page(
    gs: Genstream, new_page: PageFactory
) -> None:
    page, project_id = await open_project(new_page, gs, "built-ins")
    await page.select_option("#pipeline-select", "page")
    await expect_steps(page, await declared(gs, "page"), "todo")
    await send(page, "How much does the team plan cost?")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_steps(page, await declared(gs, "page"), "done")
    await expect(page.locator("#preview")).to_have_attribute("data-complete", "true")
    (whole,) = [e for e in await gs.events(project_id) if e["type"] == "page"]
    await expect(page.locator("#preview-title")).to_have_text(whole["page"]["title"])
    shown = await page.evaluate(SECTIONS_JS)
    assert [(s["kind"], s["heading"]) for s in shown] == [
        (s["kind"], s["heading"]) for s in whole["page"]["sections"]
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "web-page-pipeline-page.png")

    await page.select_option("#pipeline-select", "scenes")
    await expect_steps(page, await declared(gs, "scenes"), "todo")
    scenes = page.locator("#scene-list li.scene")
    await send(page, "add a scene of a sunrise over the harbour")
    await expect(scenes).to_have_count(1)
    await scenes.first.evaluate("(node) => { window.__scene = node; }")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await send(page, "rename scene 1 to Dawn")
    await expect(scenes.first.locator(".title")).to_have_text("Dawn")
    assert await scenes.first.evaluate("(node) => node === window.__scene")
    await expect(assistant(page)).to_have_attribute("data-status", "success")
    await expect_steps(page, await declared(gs, "scenes"), "done")
    stored = (await gs.json("GET", f"/api/projects/{project_id}/scenes"))["scenes"]
    assert [(s["id"], s["title"]) for s in stored] == [
        (await scenes.first.get_attribute("data-scene-id"), "Dawn")
    ]
