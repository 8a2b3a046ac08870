"""What every storage backend must do, written once: a backend's test module subclasses
StorageContract and says how to open one (pyeventsourcing's recorder test cases are the
model). The tests go through the interface and the journal only, never through SQL, so
a second backend runs them unchanged.

No class name here starts with Test: pytest collects the cases from the subclasses only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.eventlog import event as ev
from service.eventlog.broker import Broker
from service.eventlog.event import Draft, Event, encode
from service.eventlog.journal import Emit, Journal, TxFunction
from service.protocol import GenerationStatus
from service.storage.interface import (
    DocumentRow,
    MessageRow,
    PersonaRow,
    SceneRow,
    Storage,
    StorageError,
    Tx,
)

PROJECT = "prj_contract"
OTHER = "prj_other"
TIMEOUT = 10


class OwnMistake(Exception):
    """A transaction job's own failure (not the database's): it undoes that job alone."""


def draft(project_id: str = PROJECT, generation_id: str | None = None, **payload: Any) -> Draft:
    return Draft(project_id, generation_id, ev.VALIDATION, dict(payload))


def ids(events: list[Event]) -> list[int]:
    return [event.id for event in events]


async def insert_generation(
    tx: Tx, emit: Emit, project_id: str, generation_id: str, client_request_id: str | None
) -> None:
    first = await emit(draft(project_id, generation_id, step="created"))
    for role in ("user", "assistant"):
        message_id = f"msg_{generation_id}_{role}"
        await tx.insert_message(
            MessageRow(message_id, project_id, generation_id, role, "complete", "hi", 1, 1)
        )
    await tx.insert_generation(
        generation_id=generation_id,
        project_id=project_id,
        client_request_id=client_request_id,
        prompt="a todo api",
        image_urls=[],
        provider="offline",
        model="offline",
        user_message_id=f"msg_{generation_id}_user",
        assistant_message_id=f"msg_{generation_id}_assistant",
        first_event_id=first.id,
        at=1,
    )


_generation_numbers = itertools.count(1)


def submit_job(project_id: str, client_request_id: str | None) -> TxFunction[str | None]:
    """A submit as the lifecycle makes one: the same request again is the generation it
    made (its id); a second generation while one is active is refused (None)."""

    async def submit(tx: Tx, emit: Emit) -> str | None:
        if client_request_id is not None:
            earlier = await tx.generation_by_request(project_id, client_request_id)
            if earlier is not None:
                return earlier.id
        if await tx.active_generation(project_id) is not None:
            return None
        generation_id = f"gen_{next(_generation_numbers)}"
        await insert_generation(tx, emit, project_id, generation_id, client_request_id)
        return generation_id

    return submit


class StorageContract:
    """The cases; a subclass per backend defines open_storage."""

    async def open_storage(self, directory: Path) -> Storage:
        raise NotImplementedError

    @pytest.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[Storage]:
        storage = await self.open_storage(tmp_path)
        yield storage
        await storage.close()

    @pytest.fixture
    async def broker(self) -> Broker:
        return Broker(queue_size=100_000)

    @pytest.fixture
    async def journal(self, storage: Storage, broker: Broker) -> AsyncIterator[Journal]:
        journal = await Journal.start(storage, broker)

        async def projects(tx: Tx, emit: Emit) -> None:
            for project_id in (PROJECT, OTHER):
                await tx.insert_project(project_id, project_id, 1)

        await asyncio.wait_for(journal.transact(projects), TIMEOUT)
        yield journal
        await journal.close()

    # -- appends and reads after a cursor ----------------------------------------------

    async def test_appends_are_read_back_after_a_cursor_in_id_order(
        self, storage: Storage, journal: Journal
    ) -> None:
        async with asyncio.timeout(TIMEOUT):
            mine = await journal.append(*(draft(n=n) for n in range(3)))
            await journal.append(draft(OTHER, n=99))
            mine += await journal.append(draft(PROJECT, "gen_a", n=3), draft(n=4))

            assert ids(await storage.events_after(PROJECT, 0, 100)) == ids(mine)
            read = await storage.events_after(PROJECT, mine[1].id, 2)
            assert read == mine[2:4]  # after the cursor, up to the limit, whole events
            assert await storage.events_after(PROJECT, mine[-1].id, 100) == []
            assert ids(await storage.events_after(PROJECT, 0, 100, "gen_a")) == [mine[3].id]
            assert await storage.max_event_id() == mine[-1].id

    async def test_an_insert_gives_the_ids_and_returns_the_events_sealed(
        self, storage: Storage, journal: Journal
    ) -> None:
        # Straight on the backend: the ids come from the storage, not from the caller.
        await journal.close()  # the writer loop is the only writer otherwise
        committed = await storage.commit_events([encode(draft(n=1)), encode(draft(n=2))])
        tx = storage.transaction()
        await tx.begin()
        undone = await tx.insert_events([encode(draft(n=3))])
        await tx.rollback()
        tx = storage.transaction()
        await tx.begin()
        inserted = await tx.insert_events([encode(draft(n=4)), encode(draft(OTHER, n=5))])
        await tx.commit()
        every = committed + inserted
        assert ids(every) == sorted(ids(every)) and len(set(ids(every))) == 4
        assert undone[0].id > committed[-1].id  # given, then undone with its transaction
        for event in every + undone:
            body = orjson.loads(event.data)
            assert body["id"] == event.id and event.frame.startswith(b"id: %d\n" % event.id)
        stored = await storage.events_after(PROJECT, 0, 10)
        assert [orjson.loads(e.data)["n"] for e in stored] == [1, 2, 4]
        assert stored == committed + inserted[:1]

    async def test_a_new_journal_numbers_on_after_the_stored_events(
        self, storage: Storage, journal: Journal
    ) -> None:
        async with asyncio.timeout(TIMEOUT):
            before = await journal.append(draft(n=1))
            await journal.close()
            again = await Journal.start(storage, Broker(queue_size=16))
            try:
                after = await again.append(draft(n=2))
            finally:
                await again.close()
        assert after[0].id == before[0].id + 1

    # -- id order under concurrent appenders ---------------------------------------------

    async def test_concurrent_appenders_get_increasing_ids_and_readers_see_no_gap(
        self, storage: Storage, journal: Journal, broker: Broker
    ) -> None:
        appenders, per_appender = 20, 15
        seen_published: list[int] = []
        gaps: list[list[int]] = []

        async def appender(number: int) -> list[int]:
            mine: list[int] = []
            for n in range(per_appender):
                mine += ids(await journal.append(draft(appender=number, n=n)))
            return mine

        async def reader(done: asyncio.Event) -> int:
            reads = 0
            while not done.is_set():
                read = ids(await storage.events_after(PROJECT, 0, 100_000))
                reads += 1
                # What a reader sees is a prefix of the log: never id n + 1 without n.
                if read and read != list(range(read[0], read[0] + len(read))):
                    gaps.append(read)
            return reads

        with broker.subscription(PROJECT) as subscriber:
            done = asyncio.Event()
            async with asyncio.timeout(TIMEOUT):
                readers = [asyncio.create_task(reader(done)) for _ in range(2)]
                results = await asyncio.gather(*(appender(a) for a in range(appenders)))
                done.set()
                reads = await asyncio.gather(*readers)
            seen_published = ids(subscriber.take())

        every = sorted(i for mine in results for i in mine)
        assert every == list(range(every[0], every[0] + appenders * per_appender))
        for mine in results:
            assert mine == sorted(mine)  # each appender's ids rise in its own order
        # Published in commit order, which is id order.
        assert seen_published == every
        assert gaps == []
        assert min(reads) > 0
        assert ids(await storage.events_after(PROJECT, 0, 100_000)) == every

    # -- savepoint semantics ----------------------------------------------------------------

    async def test_a_failing_job_undoes_only_its_own_writes(
        self, storage: Storage, journal: Journal
    ) -> None:
        def job(project_id: str, fails: bool) -> TxFunction[str]:
            async def write(tx: Tx, emit: Emit) -> str:
                await tx.insert_project(project_id, project_id, 1)
                await emit(draft(project_id, n=1))
                if fails:
                    raise OwnMistake(project_id)
                return project_id

            return write

        async with asyncio.timeout(TIMEOUT):
            # Queued together, so one transaction: the middle job fails inside it.
            first = journal.transact(job("prj_1", False))
            middle = journal.transact(job("prj_2", True))
            last = journal.transact(job("prj_3", False))
            assert await first == "prj_1"
            with pytest.raises(OwnMistake):
                await middle
            assert await last == "prj_3"

            assert await storage.project_exists("prj_1")
            assert not await storage.project_exists("prj_2")
            assert await storage.project_exists("prj_3")
            assert await storage.events_after("prj_2", 0, 10) == []
            kept = (await storage.events_after("prj_1", 0, 10)) + (
                await storage.events_after("prj_3", 0, 10)
            )
        # The undone job's id is given again: no hole in the log.
        assert ids(kept)[1] == ids(kept)[0] + 1

    async def test_a_transaction_rolls_back_to_its_savepoint(self, storage: Storage) -> None:
        # The statements the journal's writer loop drives, straight on the backend.
        tx = storage.transaction()
        await tx.begin()
        await tx.insert_project("prj_kept", "kept", 1)
        await tx.savepoint()
        await tx.insert_project("prj_undone", "undone", 1)
        await tx.rollback_to_savepoint()
        await tx.savepoint()
        await tx.insert_project("prj_released", "released", 1)
        await tx.release()
        await tx.commit()
        assert await storage.project_exists("prj_kept")
        assert not await storage.project_exists("prj_undone")
        assert await storage.project_exists("prj_released")

    async def test_a_database_failure_is_a_storage_error_and_rolls_back(
        self, storage: Storage
    ) -> None:
        tx = storage.transaction()
        await tx.begin()
        await tx.insert_project("prj_once", "once", 1)
        with pytest.raises(StorageError):  # the backend's own exception stays inside it
            await tx.insert_project("prj_once", "twice", 1)
        await tx.rollback()
        assert not await storage.project_exists("prj_once")

    # -- idempotent submit ------------------------------------------------------------------

    async def test_the_same_client_request_id_twice_gives_one_generation(
        self, storage: Storage, journal: Journal
    ) -> None:
        async with asyncio.timeout(TIMEOUT):
            # Together in one transaction, then once more in a later one.
            together = await asyncio.gather(
                journal.transact(submit_job(PROJECT, "req-1")),
                journal.transact(submit_job(PROJECT, "req-1")),
            )
            later = await journal.transact(submit_job(PROJECT, "req-1"))
            generation_id = together[0]
            assert generation_id is not None
            assert list(together) == [generation_id, generation_id] and later == generation_id
            assert await storage.active_generation_ids() == [generation_id]
            # The same request id in another project is another request.
            elsewhere = await journal.transact(submit_job(OTHER, "req-1"))
            assert elsewhere not in (None, generation_id)

    async def test_a_second_generation_with_the_same_request_id_is_refused(
        self, journal: Journal
    ) -> None:
        async def duplicate(tx: Tx, emit: Emit) -> None:
            await insert_generation(tx, emit, PROJECT, "gen_dup_1", "req-dup")
            with pytest.raises(StorageError):
                await insert_generation(tx, emit, PROJECT, "gen_dup_2", "req-dup")
            raise OwnMistake  # roll the job back: the transaction is not usable here

        with pytest.raises(OwnMistake):
            await asyncio.wait_for(journal.transact(duplicate), TIMEOUT)

    # -- one active generation per project ------------------------------------------------

    async def test_one_active_generation_per_project(
        self, storage: Storage, journal: Journal
    ) -> None:
        async with asyncio.timeout(TIMEOUT):
            submitted = await asyncio.gather(
                *(journal.transact(submit_job(PROJECT, f"req-{n}")) for n in range(5))
            )
            started = [gid for gid in submitted if gid is not None]
            assert len(started) == 1
            active = started[0]
            assert await storage.active_generation_ids() == [active]
            project = await storage.project(PROJECT)
            assert project is not None and project.active_generation is not None
            assert project.active_generation.id == active

            async def finish(tx: Tx, emit: Emit) -> Any:
                await tx.update_generation(active, status=GenerationStatus.COMPLETED)
                return await tx.active_generation(PROJECT)

            assert await journal.transact(finish) is None
            assert await storage.active_generation_ids() == []
            # Ended: the project takes the next one.
            assert await journal.transact(submit_job(PROJECT, "req-next")) not in (None, active)

    # -- a read that starts after a publish sees it ----------------------------------------

    async def test_a_read_issued_after_a_publish_sees_it(
        self, storage: Storage, journal: Journal, broker: Broker
    ) -> None:
        rounds = 50

        async def noise() -> None:
            while True:
                await journal.append(draft(OTHER, n=0))

        with broker.subscription(PROJECT) as subscriber:
            background = asyncio.create_task(noise())
            try:
                async with asyncio.timeout(TIMEOUT):
                    for n in range(rounds):
                        journal.append(draft(n=n))  # not awaited: the publish is the signal
                        while not subscriber.pending:
                            await subscriber.wait(TIMEOUT)
                        published = subscriber.take()
                        newest = await storage.events_after(PROJECT, published[0].id - 1, 100)
                        assert ids(published) == ids(newest)[: len(published)]
            finally:
                background.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await background

    # -- pipelines: a generation's pipeline and inputs, a project's default -----------------

    async def test_a_generation_keeps_its_pipeline_and_inputs(
        self, storage: Storage, journal: Journal
    ) -> None:
        inputs = {"visitor_id": "v-1", "nested": {"list": [1, "two", None]}, "ünï": "😀"}

        async def submit(tx: Tx, emit: Emit) -> None:
            first = await emit(draft(PROJECT, "gen_page", step="created"))
            await tx.insert_generation(
                generation_id="gen_page",
                project_id=PROJECT,
                client_request_id=None,
                prompt="a page",
                image_urls=[],
                provider="offline",
                model="offline",
                user_message_id="msg_u",
                assistant_message_id="msg_a",
                first_event_id=first.id,
                at=1,
                pipeline="page",
                inputs=inputs,
            )

        async with asyncio.timeout(TIMEOUT):
            await journal.transact(submit)
            await journal.transact(submit_job(OTHER, None))  # names no pipeline
            row = await storage.generation("gen_page")
            assert row is not None and (row.pipeline, row.inputs) == ("page", inputs)
            project = await storage.project(PROJECT)
            assert project is not None and project.active_generation is not None
            assert project.active_generation.inputs == inputs
            (other,) = [p for p in await storage.projects() if p.id == OTHER]
            assert other.active_generation is not None
            assert (other.active_generation.pipeline, other.active_generation.inputs) == (
                "code",
                {},
            )

    async def test_a_project_has_a_default_pipeline_to_set_and_clear(
        self, storage: Storage, journal: Journal
    ) -> None:
        async def create(tx: Tx, emit: Emit) -> None:
            await tx.insert_project("prj_scenes", "scenes", 1, pipeline="scenes")

        def setting(pipeline: str | None) -> TxFunction[None]:
            async def write(tx: Tx, emit: Emit) -> None:
                await tx.set_project_pipeline(PROJECT, pipeline)

            return write

        async with asyncio.timeout(TIMEOUT):
            await journal.transact(create)
            made = await storage.project("prj_scenes")
            assert made is not None and made.pipeline == "scenes"
            plain = await storage.project(PROJECT)
            assert plain is not None and plain.pipeline is None
            await journal.transact(setting("page"))
            assert {p.id: p.pipeline for p in await storage.projects()} == {
                OTHER: None,
                PROJECT: "page",
                "prj_scenes": "scenes",
            }
            await journal.transact(setting(None))
            cleared = await storage.project(PROJECT)
            assert cleared is not None and cleared.pipeline is None

    # -- documents: the knowledge base and its full-text search ----------------------------

    async def _documents(self, journal: Journal, *documents: DocumentRow) -> None:
        async def insert(tx: Tx, emit: Emit) -> None:
            for document in documents:
                await tx.insert_document(document)

        await asyncio.wait_for(journal.transact(insert), TIMEOUT)

    async def test_a_search_ranks_the_document_that_matches_more_words_first(
        self, storage: Storage, journal: Journal
    ) -> None:
        await self._documents(
            journal,
            DocumentRow("doc_one", PROJECT, "Billing", "Invoices are sent monthly.", 1),
            DocumentRow(
                "doc_both", PROJECT, "Pricing", "Our pricing has monthly and yearly plans.", 1
            ),
            DocumentRow("doc_none", PROJECT, "Support", "Email us any time.", 2),
            DocumentRow("doc_other", OTHER, "Pricing", "Monthly pricing elsewhere.", 2),
        )
        hits = await storage.search_documents(PROJECT, "monthly pricing", 10)
        assert [hit.document_id for hit in hits] == ["doc_both", "doc_one"]
        assert hits[0].rank > hits[1].rank
        assert hits[0].title == "Pricing" and "monthly" in hits[0].snippet
        assert "<b>" not in hits[0].snippet  # plain text: no markup around the matches
        # Stemmed words: 'prices' finds 'pricing' on both backends.
        assert [
            hit.document_id for hit in await storage.search_documents(PROJECT, "prices", 10)
        ] == ["doc_both"]
        assert [d.id for d in await storage.documents(PROJECT)] == [
            "doc_one",
            "doc_both",
            "doc_none",
        ]
        assert len(await storage.search_documents(PROJECT, "monthly pricing", 1)) == 1
        assert await storage.search_documents(PROJECT, "monthly", 0) == []

    @pytest.mark.parametrize(
        "query",
        [
            '"',
            'monthly"',
            "NEAR(monthly",
            "NEAR(monthly, 3)",
            "*",
            "monthly*",
            "AND",
            "monthly AND",
            "OR OR",
            "NOT monthly",
            "-monthly",
            "title:monthly",
            "^monthly",
            "{title}: x",
            "'; DROP TABLE documents; --",
            "",
            "   ",
            "\x00\u2028 😀",
        ],
        ids=lambda query: repr(query),
    )
    async def test_a_hostile_query_is_taken_as_words(
        self, storage: Storage, journal: Journal, query: str
    ) -> None:
        await self._documents(
            journal, DocumentRow("doc_m", PROJECT, "Plans", "Monthly and yearly plans.", 1)
        )
        hits = await storage.search_documents(PROJECT, query, 10)
        assert [hit.document_id for hit in hits] in ([], ["doc_m"])
        if "monthly" in query.lower():
            assert [hit.document_id for hit in hits] == ["doc_m"]
        assert [d.id for d in await storage.documents(PROJECT)] == ["doc_m"]

    async def test_a_deleted_document_leaves_the_search(
        self, storage: Storage, journal: Journal
    ) -> None:
        await self._documents(
            journal,
            DocumentRow("doc_gone", PROJECT, "Refunds", "Refunds take five days.", 1),
            DocumentRow("doc_kept", PROJECT, "Refund policy", "Ask support.", 2),
        )

        def deleting(project_id: str, document_id: str) -> TxFunction[bool]:
            async def delete(tx: Tx, emit: Emit) -> bool:
                return await tx.delete_document(project_id, document_id)

            return delete

        async with asyncio.timeout(TIMEOUT):
            assert not await journal.transact(deleting(OTHER, "doc_gone"))  # not that project's
            assert await journal.transact(deleting(PROJECT, "doc_gone"))
            assert not await journal.transact(deleting(PROJECT, "doc_gone"))
        hits = await storage.search_documents(PROJECT, "refunds", 10)
        assert [hit.document_id for hit in hits] == ["doc_kept"]
        assert await storage.document(PROJECT, "doc_gone") is None
        kept = await storage.document(PROJECT, "doc_kept")
        assert kept == DocumentRow("doc_kept", PROJECT, "Refund policy", "Ask support.", 2)
        assert await storage.document(OTHER, "doc_kept") is None

    async def test_a_rolled_back_document_is_not_found(
        self, storage: Storage, journal: Journal
    ) -> None:
        async def insert_then_fail(tx: Tx, emit: Emit) -> None:
            await tx.insert_document(DocumentRow("doc_undone", PROJECT, "Undone", "ghost", 1))
            raise OwnMistake

        with pytest.raises(OwnMistake):
            await asyncio.wait_for(journal.transact(insert_then_fail), TIMEOUT)
        assert await storage.search_documents(PROJECT, "ghost undone", 10) == []
        assert await storage.documents(PROJECT) == []

    # -- personas and scenes ----------------------------------------------------------------

    async def test_a_persona_is_upserted(self, storage: Storage, journal: Journal) -> None:
        first = PersonaRow(PROJECT, "v-1", ("slow builds",), (), 1, 10)
        again = PersonaRow(PROJECT, "v-1", ("slow builds", "cost"), ("pricing",), 2, 20)

        def upserting(persona: PersonaRow) -> TxFunction[PersonaRow | None]:
            async def upsert(tx: Tx, emit: Emit) -> PersonaRow | None:
                await tx.upsert_persona(persona)
                return await tx.persona(persona.project_id, persona.visitor_id)

            return upsert

        async with asyncio.timeout(TIMEOUT):
            assert await storage.persona(PROJECT, "v-1") is None
            assert await journal.transact(upserting(first)) == first
            assert await journal.transact(upserting(again)) == again
            elsewhere = PersonaRow(OTHER, "v-1", (), ("ünï",), 1, 30)
            await journal.transact(upserting(elsewhere))
        assert await storage.persona(PROJECT, "v-1") == again
        assert await storage.persona(OTHER, "v-1") == elsewhere
        assert await storage.persona(PROJECT, "v-2") is None

    async def test_scenes_are_added_edited_and_deleted_in_position_order(
        self, storage: Storage, journal: Journal
    ) -> None:
        intro = SceneRow("scn_intro", PROJECT, 0, "Intro", "A logo", 3000, 1, 1)
        outro = SceneRow("scn_outro", PROJECT, 1, "Outro", "Credits", 5000, 2, 2)
        trimmed = SceneRow("scn_outro", OTHER, -1, "Outro", "Credits", 2500, 99, 3)

        async def edit(tx: Tx, emit: Emit) -> tuple[bool, bool, SceneRow | None]:
            await tx.insert_scene(outro)
            await tx.insert_scene(intro)
            updated = await tx.update_scene(trimmed)
            missing = await tx.update_scene(SceneRow("scn_none", PROJECT, 0, "", "", 0, 0, 0))
            return updated, missing, await tx.scene("scn_outro")

        async with asyncio.timeout(TIMEOUT):
            updated, missing, seen = await journal.transact(edit)
        assert (updated, missing) == (True, False)
        # The project and created_at stay; the rest is the update's.
        stored = SceneRow("scn_outro", PROJECT, -1, "Outro", "Credits", 2500, 2, 3)
        assert seen == stored and await storage.scene("scn_outro") == stored
        assert [scene.id for scene in await storage.scenes(PROJECT)] == ["scn_outro", "scn_intro"]
        assert await storage.scenes(OTHER) == []

        async def delete(tx: Tx, emit: Emit) -> tuple[bool, bool]:
            return await tx.delete_scene("scn_outro"), await tx.delete_scene("scn_outro")

        assert await asyncio.wait_for(journal.transact(delete), TIMEOUT) == (True, False)
        assert await storage.scenes(PROJECT) == [intro]
        assert await storage.scene("scn_outro") is None
