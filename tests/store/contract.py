"""The store contract: every adapter runs this suite through a subclass that provides the `store` fixture."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pydantic import ValidationError

from schemas.common import utc_now
from schemas.documents import (
    PUBLIC_OWNER,
    ApiKeyDoc,
    RegionDoc,
    TaskDoc,
    TaskKind,
    TaskOutcome,
    TaskStatus,
)
from store.id_blocks import IdBlocks
from store.port import (
    API_KEYS,
    EXPIRING,
    REGIONS,
    TASKS,
    DuplicateId,
    Expiring,
    FileMissing,
    Store,
    StoreError,
)

ALICE = "alice"
BOB = "bob"


def task(doc_id: str, owner: str = ALICE, kind: TaskKind = TaskKind.INFERENCE) -> TaskDoc:
    return TaskDoc(id=doc_id, owner=owner, kind=kind)


def api_key(doc_id: str, owner: str = ALICE, name: str = "") -> ApiKeyDoc:
    return ApiKeyDoc(id=doc_id, owner=owner, tenant=owner, name=name)


def region(doc_id: str, source_id: str, owner: str = ALICE) -> RegionDoc:
    return RegionDoc(
        id=doc_id,
        owner=owner,
        project_id="p",
        source_id=source_id,
        tag_id="t",
        left=0.1,
        top=0.2,
        width=0.3,
        height=0.4,
    )


def outcome(task_id: str, status: TaskStatus = TaskStatus.SUCCESS, **fields: object) -> TaskOutcome:
    return TaskOutcome.model_validate({"task_id": task_id, "status": status, **fields})


class StoreContract:
    """Subclasses define an async `store` fixture yielding a fresh, empty store."""

    # documents

    async def test_insert_then_get_returns_an_equal_document(self, store: Store) -> None:
        doc = api_key("k1", name="laptop")
        await store.insert(API_KEYS, doc)
        assert await store.get(API_KEYS, "k1", owners=[ALICE]) == doc
        assert await store.get(API_KEYS, "nope", owners=[ALICE]) is None

    async def test_insert_of_an_existing_id_raises_duplicate_id(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        with pytest.raises(DuplicateId):
            await store.insert(TASKS, task("1", owner=BOB))
        assert (await store.get(TASKS, "1", owners=[ALICE])) is not None

    async def test_insert_many_stores_every_document_in_order(self, store: Store) -> None:
        await store.insert(TASKS, task("0"))
        docs = [task(str(n), owner=ALICE if n % 2 else BOB) for n in range(1, 6)]
        await store.insert_many(TASKS, docs)
        await store.insert_many(TASKS, [])
        assert await store.get_many(TASKS, ["5", "1", "2"], owners=[ALICE, BOB]) == [
            docs[4],
            docs[0],
            docs[1],
        ]
        page = await store.find(TASKS, owners=[ALICE, BOB])
        assert [doc.id for doc in page.items] == ["0", "1", "2", "3", "4", "5"]

    async def test_insert_many_with_an_existing_id_raises_duplicate_id(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        with pytest.raises(DuplicateId):
            await store.insert_many(TASKS, [task("1", owner=BOB), task("2")])
        assert (await store.get(TASKS, "1", owners=[ALICE])) is not None
        assert await store.get(TASKS, "1", owners=[BOB]) is None

    async def test_a_document_is_invisible_to_other_owners(self, store: Store) -> None:
        await store.insert(TASKS, task("1", owner=BOB))
        await store.insert(TASKS, task("2", owner=PUBLIC_OWNER))
        assert await store.get(TASKS, "1", owners=[ALICE]) is None
        assert await store.get(TASKS, "2", owners=[ALICE]) is None
        assert (await store.get(TASKS, "2", owners=[ALICE, PUBLIC_OWNER])) is not None
        page = await store.find(TASKS, owners=[ALICE, PUBLIC_OWNER])
        assert [doc.id for doc in page.items] == ["2"]

    async def test_get_many_keeps_the_order_asked_and_skips_missing_or_foreign(self, store: Store) -> None:
        for doc_id in ("1", "2", "3"):
            await store.insert(TASKS, task(doc_id))
        await store.insert(TASKS, task("4", owner=BOB))
        found = await store.get_many(TASKS, ["3", "missing", "1", "4", "2"], owners=[ALICE])
        assert [doc.id for doc in found] == ["3", "1", "2"]
        assert await store.get_many(TASKS, [], owners=[ALICE]) == []

    async def test_find_pages_in_insertion_order_and_counts_all_matches(self, store: Store) -> None:
        ids = ["9", "10", "2", "30", "1"]  # insertion order differs from id order, string or numeric
        for doc_id in ids:
            await store.insert(TASKS, task(doc_id))
        page = await store.find(TASKS, owners=[ALICE], offset=1, limit=2)
        assert (page.count, [doc.id for doc in page.items]) == (5, ["10", "2"])
        assert [doc.id for doc in (await store.find(TASKS, owners=[ALICE])).items] == ids
        assert (await store.find(TASKS, owners=[ALICE], offset=4, limit=10)).items[0].id == "1"
        empty = await store.find(TASKS, owners=[ALICE], offset=5)
        assert (empty.count, empty.items) == (5, [])
        assert (await store.find(TASKS, owners=[ALICE], limit=0)).items == []

    async def test_find_where_matches_fields_by_equality(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        await store.insert(TASKS, task("2", kind=TaskKind.DEPLOYMENT))
        await store.insert(TASKS, task("3", owner=BOB, kind=TaskKind.DEPLOYMENT))
        await store.finish_tasks([outcome("1", TaskStatus.ERROR, error="boom")])

        async def ids(**where: str | None) -> list[str]:
            page = await store.find(TASKS, owners=[ALICE], where=where)
            assert page.count == len(page.items)
            return [doc.id for doc in page.items]

        assert await ids(kind="deployment") == ["2"]
        assert await ids(kind=TaskKind.INFERENCE, status="error") == ["1"]
        assert await ids(error=None) == ["2"]
        assert await ids(id="2") == ["2"]
        assert await ids(kind="training") == []

    async def test_sweep_matches_across_owners_in_insertion_order(self, store: Store) -> None:
        await store.insert(TASKS, task("5", owner=BOB))
        await store.insert(TASKS, task("4"))
        await store.insert(TASKS, task("3", kind=TaskKind.DEPLOYMENT))
        swept = await store.sweep(TASKS, where={"kind": "inference"})
        assert [(doc.id, doc.owner) for doc in swept] == [("5", BOB), ("4", ALICE)]
        assert [doc.id for doc in await store.sweep(TASKS, where={}, limit=1)] == ["5"]

    async def test_find_where_refuses_unknown_fields(self, store: Store) -> None:
        with pytest.raises(ValueError, match="statsu"):
            await store.find(TASKS, owners=[ALICE], where={"statsu": "pending"})

    async def test_update_sets_fields_and_returns_the_new_document(self, store: Store) -> None:
        await store.insert(API_KEYS, api_key("k1", name="old"))
        updated = await store.update(API_KEYS, "k1", owner=ALICE, changes={"name": "new"})
        assert updated is not None
        assert updated.name == "new"
        assert await store.get(API_KEYS, "k1", owners=[ALICE]) == updated

    async def test_update_validates_through_the_model(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        with pytest.raises(ValidationError):
            await store.update(TASKS, "1", owner=ALICE, changes={"status": "bogus"})
        with pytest.raises(ValueError, match="cannot be changed"):
            await store.update(TASKS, "1", owner=ALICE, changes={"owner": BOB})
        with pytest.raises(ValueError, match="no field"):
            await store.update(TASKS, "1", owner=ALICE, changes={"colour": "red"})
        stored = await store.get(TASKS, "1", owners=[ALICE])
        assert stored is not None
        assert stored.status is TaskStatus.PENDING

    async def test_update_of_a_foreign_or_missing_document_is_none(self, store: Store) -> None:
        await store.insert(API_KEYS, api_key("k1", owner=BOB, name="bob's"))
        assert await store.update(API_KEYS, "k1", owner=ALICE, changes={"name": "stolen"}) is None
        assert await store.update(API_KEYS, "nope", owner=ALICE, changes={"name": "x"}) is None
        stored = await store.get(API_KEYS, "k1", owners=[BOB])
        assert stored is not None
        assert stored.name == "bob's"

    async def test_delete_removes_only_the_owners_document(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        assert await store.delete(TASKS, "1", owner=BOB) is False
        assert await store.delete(TASKS, "1", owner=ALICE) is True
        assert await store.delete(TASKS, "1", owner=ALICE) is False
        assert await store.get(TASKS, "1", owners=[ALICE]) is None

    async def test_delete_where_counts_and_stays_in_the_owners_documents(self, store: Store) -> None:
        await store.insert(TASKS, task("1"))
        await store.insert(TASKS, task("2", kind=TaskKind.DEPLOYMENT))
        await store.insert(TASKS, task("3"))
        await store.insert(TASKS, task("4", owner=BOB))
        assert await store.delete_where(TASKS, owner=ALICE, where={"kind": "inference"}) == 2
        assert [doc.id for doc in (await store.find(TASKS, owners=[ALICE, BOB])).items] == ["2", "4"]

    async def test_update_with_an_expectation_changes_only_a_matching_document(self, store: Store) -> None:
        await store.insert(API_KEYS, api_key("k1", name="old"))
        missed = await store.update(
            API_KEYS, "k1", owner=ALICE, changes={"name": "x"}, expect={"name": "nope"}
        )
        assert missed is None
        hit = await store.update(API_KEYS, "k1", owner=ALICE, changes={"name": "new"}, expect={"name": "old"})
        assert hit is not None
        assert hit.name == "new"
        # The same compare-and-set from two writers: exactly one wins.
        racers = [
            store.update(API_KEYS, "k1", owner=ALICE, changes={"name": f"w{n}"}, expect={"name": "new"})
            for n in range(5)
        ]
        assert sum(result is not None for result in await asyncio.gather(*racers)) == 1

    async def test_insert_together_writes_several_collections_in_order(self, store: Store) -> None:
        await store.insert_together(
            [(API_KEYS, [api_key("k1")]), (TASKS, [task("1"), task("2")]), (TASKS, [])]
        )
        assert await store.get(API_KEYS, "k1", owners=[ALICE]) is not None
        assert [doc.id for doc in (await store.find(TASKS, owners=[ALICE])).items] == ["1", "2"]
        with pytest.raises(DuplicateId):
            await store.insert_together([(API_KEYS, [api_key("k2")]), (TASKS, [task("2")])])

    async def test_replace_where_swaps_the_owners_matches_for_new_documents(self, store: Store) -> None:
        await store.insert_many(
            REGIONS, [region("1", "s"), region("2", "s"), region("3", "other"), region("4", "s", owner=BOB)]
        )
        new = [region("5", "s"), region("6", "s")]
        assert await store.replace_where(REGIONS, owner=ALICE, where={"source_id": "s"}, docs=new) == 2
        page = await store.find(REGIONS, owners=[ALICE, BOB])
        assert [doc.id for doc in page.items] == ["3", "4", "5", "6"]
        assert await store.get_many(REGIONS, ["5", "6"], owners=[ALICE]) == new
        # No documents: the matches are only deleted.
        assert await store.replace_where(REGIONS, owner=ALICE, where={"source_id": "s"}, docs=[]) == 2
        assert [doc.id for doc in (await store.find(REGIONS, owners=[ALICE, BOB])).items] == ["3", "4"]

    async def test_replace_where_with_an_existing_id_changes_nothing(self, store: Store) -> None:
        await store.insert_many(REGIONS, [region("1", "s"), region("2", "other")])
        with pytest.raises(DuplicateId):
            await store.replace_where(
                REGIONS, owner=ALICE, where={"source_id": "s"}, docs=[region("3", "s"), region("2", "s")]
            )
        page = await store.find(REGIONS, owners=[ALICE])
        assert [(doc.id, doc.source_id) for doc in page.items] == [("1", "s"), ("2", "other")]

    async def test_concurrent_replacements_leave_one_whole_set(self, store: Store) -> None:
        await store.insert_many(REGIONS, [region("old1", "s"), region("old2", "s")])
        sets = [[region(f"{n}.{i}", "s") for i in range(3)] for n in range(6)]
        await asyncio.gather(
            *(store.replace_where(REGIONS, owner=ALICE, where={"source_id": "s"}, docs=d) for d in sets)
        )
        left = sorted(doc.id for doc in (await store.find(REGIONS, owners=[ALICE])).items)
        assert left in [sorted(doc.id for doc in docs) for docs in sets]

    async def test_delete_many_removes_only_the_owners_listed_documents(self, store: Store) -> None:
        for doc_id, owner in [("1", ALICE), ("2", ALICE), ("3", ALICE), ("4", BOB)]:
            await store.insert(TASKS, task(doc_id, owner=owner))
        assert await store.delete_many(TASKS, ["1", "3", "4", "nope"], owner=ALICE) == 2
        assert await store.delete_many(TASKS, [], owner=ALICE) == 0
        assert [doc.id for doc in (await store.find(TASKS, owners=[ALICE, BOB])).items] == ["2", "4"]

    @pytest.mark.parametrize("expiring", EXPIRING, ids=lambda e: e.collection.name)
    async def test_purge_expired_deletes_old_documents_across_owners(
        self, store: Store, expiring: Expiring
    ) -> None:
        now = utc_now()
        assert expiring.date_field in expiring.collection.model.model_fields
        ages = {"old-a": 40, "old-b": 31, "new": 29, "fresh": 0}
        for doc_id, days in ages.items():
            owner = BOB if doc_id == "old-b" else ALICE
            doc = _sample(expiring, doc_id, owner, now - timedelta(days=days))
            await store.insert(expiring.collection, doc)
        assert await store.purge_expired(expiring, before=now - timedelta(days=30), limit=1) == 1
        assert await store.purge_expired(expiring, before=now - timedelta(days=30)) == 1
        assert await store.purge_expired(expiring, before=now - timedelta(days=30)) == 0
        left = await store.find(expiring.collection, owners=[ALICE, BOB])
        assert sorted(doc.id for doc in left.items) == ["fresh", "new"]

    # counters

    async def test_next_id_increases_per_counter(self, store: Store) -> None:
        first = [int(await store.next_id("tasks")) for _ in range(3)]
        assert first == sorted(set(first))
        assert int(await store.next_id("networks")) == 1
        assert int(await store.next_id("tasks")) > first[-1]

    async def test_next_id_is_unique_under_concurrency(self, store: Store) -> None:
        ids = await asyncio.gather(*(store.next_id("tasks") for _ in range(50)))
        assert sorted(map(int, ids)) == list(range(1, 51))

    async def test_reserve_ids_takes_a_run_no_other_call_gets(self, store: Store) -> None:
        assert await store.next_id("tasks") == "1"
        block = await store.reserve_ids("tasks", 10)
        assert block == range(2, 12)
        assert await store.next_id("tasks") == "12"
        assert await store.reserve_ids("networks", 1) == range(1, 2)  # counters stay apart
        with pytest.raises(ValueError, match="at least one id"):
            await store.reserve_ids("tasks", 0)

    async def test_reservations_under_concurrency_never_overlap(self, store: Store) -> None:
        blocks = await asyncio.gather(
            *(store.reserve_ids("tasks", size) for size in (1, 5, 64, 3) * 5),
            *(store.next_id("tasks") for _ in range(10)),
        )
        values = [int(value) for item in blocks for value in (item if isinstance(item, range) else [item])]
        assert sorted(values) == list(range(1, len(values) + 1))

    async def test_id_blocks_hand_out_reserved_ids_once(self, store: Store) -> None:
        first, second = IdBlocks(store, "tasks", block=4), IdBlocks(store, "tasks", block=3)
        taken = await asyncio.gather(
            *(blocks.next() for _ in range(9) for blocks in (first, second)),
            first.take(6),
            second.take(2),
            store.next_id("tasks"),
        )
        ids = [value for item in taken for value in ([item] if isinstance(item, str) else item)]
        assert len(ids) == 9 * 2 + 6 + 2 + 1 == len(set(ids))
        assert all(value.isdigit() for value in ids)
        run = await first.take(5)
        assert [int(value) for value in run] == sorted(int(value) for value in run)

    # task completion

    async def test_finish_tasks_moves_pending_tasks_once(self, store: Store) -> None:
        for doc_id in ("1", "2", "3"):
            await store.insert(TASKS, task(doc_id))
        moved = await store.finish_tasks(
            [
                outcome("1", data={"outputs": [1]}),
                outcome("2", TaskStatus.ERROR, error="bad image"),
                outcome("unknown"),
                outcome("1", TaskStatus.ERROR, error="second outcome of the same batch"),
            ]
        )
        assert moved == 2
        again = await store.finish_tasks([outcome("1", TaskStatus.ERROR, error="redelivered"), outcome("3")])
        assert again == 1

        done = {doc.id: doc for doc in await store.get_many(TASKS, ["1", "2", "3"], owners=[ALICE])}
        assert (done["1"].status, done["1"].data, done["1"].error) == (
            TaskStatus.SUCCESS,
            {"outputs": [1]},
            None,
        )
        assert (done["2"].status, done["2"].data, done["2"].error) == (TaskStatus.ERROR, None, "bad image")
        assert done["3"].status is TaskStatus.SUCCESS
        assert done["1"].date_updated >= done["1"].date_created
        assert await store.finish_tasks([]) == 0

    async def test_finish_tasks_refuses_a_pending_outcome(self, store: Store) -> None:
        with pytest.raises(ValueError, match="terminal"):
            await store.finish_tasks([outcome("1", TaskStatus.PENDING)])

    # files

    async def test_files_round_trip_and_overwrite(self, store: Store) -> None:
        key = "networks/12/variables/variables.index"
        await store.put_file(key, b"first")
        await store.put_file(key, b"second")
        assert await store.get_file(key) == b"second"
        await store.put_file("empty", b"")
        assert await store.get_file("empty") == b""

    async def test_a_missing_file_raises_file_missing(self, store: Store) -> None:
        with pytest.raises(FileMissing):
            await store.get_file("networks/1/saved_model.pb")

    async def test_delete_files_removes_everything_under_the_prefix(self, store: Store) -> None:
        for key in ("networks/1/saved_model.pb", "networks/1/variables/v.data", "networks/12/saved_model.pb"):
            await store.put_file(key, key.encode())
        assert await store.delete_files("networks/1/") == 2
        assert await store.delete_files("networks/1/") == 0
        with pytest.raises(FileMissing):
            await store.get_file("networks/1/variables/v.data")
        assert await store.get_file("networks/12/saved_model.pb") == b"networks/12/saved_model.pb"

    @pytest.mark.parametrize(
        "key", ["../escape", "networks/../../etc/passwd", "/etc/passwd", "a//b", "", "a/./b"]
    )
    async def test_unsafe_file_keys_are_refused(self, store: Store, key: str) -> None:
        with pytest.raises(StoreError):
            await store.put_file(key, b"x")
        with pytest.raises(StoreError):
            await store.get_file(key)

    @pytest.mark.parametrize("prefix", ["", "../", "/networks/"])
    async def test_unsafe_prefixes_are_refused(self, store: Store, prefix: str) -> None:
        with pytest.raises(StoreError):
            await store.delete_files(prefix)

    async def test_files_deleted_by_exact_key(self, store: Store) -> None:
        for key in ("outbox/1.job", "outbox/12.job", "outbox/123.job", "outbox/12.job.more"):
            await store.put_file(key, key.encode())
        assert await store.delete_file_keys(["outbox/12.job", "outbox/1.job", "outbox/missing.job"]) == 2
        assert await store.delete_file_keys([]) == 0
        for gone in ("outbox/1.job", "outbox/12.job"):
            with pytest.raises(FileMissing):
                await store.get_file(gone)
        for kept in ("outbox/123.job", "outbox/12.job.more"):
            assert await store.get_file(kept) == kept.encode()
        with pytest.raises(StoreError):
            await store.delete_file_keys(["../escape"])

    async def test_ping_answers(self, store: Store) -> None:
        await store.ping()


def _sample(expiring: Expiring, doc_id: str, owner: str, moment: object) -> object:
    """A valid document of an expiring collection, dated `moment`."""
    samples: dict[str, dict[str, object]] = {
        "tasks": {"kind": "inference"},
        "webhook_attempts": {
            "message_id": "m1",
            "endpoint_id": "e1",
            "task_id": "1",
            "event": "task.succeeded",
            "url": "https://receiver.test/",
            "attempt": 1,
            "result": "delivered",
            "duration_ms": 3.0,
        },
        "idempotency": {"task_id": "1", "fingerprint": "f"},
    }
    fields = {**samples[expiring.collection.name], expiring.date_field: moment}
    return expiring.collection.model.model_validate({"id": doc_id, "owner": owner, **fields})
