"""A conversation deleted while a chat on it runs: the two serialize. The chat is refused (404,
nothing charged) when the delete came before its history read; otherwise it was charged and answers,
its turn stored and removed by the delete, or not stored when the delete came first."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection, connections, transaction

from billing.models import Reservation, UsageEntry
from chat.models import Conversation, Message
from chat.providers import Usage
from chat.services import conversation_delete, conversation_record
from tests.chat.test_chain import ask, parse_sse
from tests.conftest import client_with_key

PAIRS = 20


def record(tenant, conversation_id: uuid.UUID | None) -> uuid.UUID | None:
    return conversation_record(
        tenant=tenant,
        conversation_id=conversation_id,
        user="",
        question="What is the capital of France?",
        answer="Paris.",
        usage=Usage(10, 0, 2),
        request_id=uuid.uuid4().hex,
    )


@pytest.mark.django_db(transaction=True)
def test_a_turn_whose_conversation_was_deleted_meanwhile_is_not_stored(tenant):
    conversation_id = record(tenant, None)
    assert conversation_id is not None
    conversation_delete(tenant=tenant, conversation_id=conversation_id)
    assert record(tenant, conversation_id) is None  # the answer was charged: no error, no turn
    assert not Message.objects.exists()


def lock_waits() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def orm_delete(*, tenant, conversation_id: uuid.UUID) -> None:
    """As the admin and a tenant's deletion delete: Django collects the messages, no lock first."""
    Conversation.objects.filter(tenant=tenant, id=conversation_id).delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("delete_conversation", [conversation_delete, orm_delete])
def test_a_delete_waits_for_the_turn_being_stored_then_removes_it(tenant, delete_conversation):
    conversation_id = record(tenant, None)
    assert conversation_id is not None
    stored, release = threading.Event(), threading.Event()

    def store_turn() -> uuid.UUID | None:
        try:
            with transaction.atomic():  # the turn's transaction stays open until the delete waits
                stored_in = record(tenant, conversation_id)
                stored.set()
                release.wait(10)
            return stored_in
        finally:
            connections.close_all()

    def delete() -> str:
        stored.wait(10)
        try:
            delete_conversation(tenant=tenant, conversation_id=conversation_id)
            return "deleted"
        except Exception as exc:
            return repr(exc)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        storing, deleting = pool.submit(store_turn), pool.submit(delete)
        for _ in range(1000):  # until the delete waits for the turn's row lock
            if lock_waits():
                break
            time.sleep(0.01)
        blocked = lock_waits()
        release.set()
    assert blocked == 1
    assert (storing.result(), deleting.result()) == (conversation_id, "deleted")
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


Outcome = tuple[int, str, dict[str, Any]]  # the chat's status, how it ended (JSON, done...), its body


def race(tenant, make_key, openai_server, *, stream: bool) -> tuple[list[str], list[Outcome], set[str]]:
    """PAIRS conversations; each gets a chat and a DELETE at once, the DELETE later for some pairs: it
    lands before the chat's history read, during its provider call (slowed by the fake server), while
    its turn is stored or after. Returns the conversations, each chat's outcome, and the request ids
    charged during the race."""
    raw_key = make_key(tenant, scopes=["chat"])[1]
    setup = client_with_key(raw_key)
    conversations = [ask(setup).json()["conversation_id"] for _ in range(PAIRS)]
    openai_server.hang_seconds = 0.3  # under the tests' 1 s request timeout
    openai_server.then(*["hang"] * PAIRS)
    barrier = threading.Barrier(2 * PAIRS)
    charged_before = charged_request_ids(tenant)

    def chat(index: int) -> Outcome:
        client = client_with_key(raw_key)
        client.raise_request_exception = False
        try:
            barrier.wait()
            response = ask(client, conversation_id=conversations[index], stream=stream)
            if response.status_code != 200 or not stream:
                return response.status_code, "json", response.json()
            try:
                events = parse_sse(b"".join(response.streaming_content).decode())
            except Exception as exc:
                return 200, f"cut: {exc!r}", {}
            return 200, *events[-1]
        finally:
            connections.close_all()

    def delete(index: int) -> int:
        client = client_with_key(raw_key)
        client.raise_request_exception = False
        try:
            barrier.wait()
            time.sleep((index % 5) * 0.3)  # 0 to 1.2 s after the chat, whose provider takes 0.3 s
            return client.delete(f"/api/v1/conversations/{conversations[index]}").status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2 * PAIRS) as pool:  # chats and deletes all at once
        chats = [pool.submit(chat, index) for index in range(PAIRS)]
        deletes = [pool.submit(delete, index) for index in range(PAIRS)]
        outcomes = [future.result() for future in chats]
        deleted = [future.result() for future in deletes]
    assert set(deleted) <= {204, 404}, deleted
    assert deleted.count(204) == PAIRS  # each conversation was there for its one DELETE
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()  # no orphans: the delete removed every stored turn
    assert not Reservation.objects.exists()  # every reservation settled or released
    return conversations, outcomes, charged_request_ids(tenant) - charged_before


def check(conversations: list[str], outcomes: list[Outcome], charged: set[str], *, answered_as: str) -> None:
    """Each chat was refused (404, before its history read) or answered; an answered chat was charged
    and names its conversation (its turn was stored, then deleted) or none (the delete came first)."""
    assert {(status, how) for status, how, _ in outcomes} <= {(200, answered_as), (404, "json")}, outcomes
    answers = [
        (conversations[index], body) for index, (status, _, body) in enumerate(outcomes) if status == 200
    ]
    assert charged == {body["id"] for _, body in answers}  # a refused chat was charged nothing
    assert all(body["conversation_id"] in (conversation, None) for conversation, body in answers)
    assert any(body["conversation_id"] is None for _, body in answers)  # some deletes came mid-call


def charged_request_ids(tenant) -> set[str]:
    return set(
        UsageEntry.objects.filter(tenant=tenant, kind="completion").values_list("request_id", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_chats_racing_deletes_of_their_conversation_answer_what_they_were_charged_for(
    tenant, make_key, upstreams
):
    openai_server, _ = upstreams
    check(*race(tenant, make_key, openai_server, stream=False), answered_as="json")


@pytest.mark.django_db(transaction=True)
def test_streamed_chats_racing_deletes_end_with_done(tenant, make_key, upstreams):
    openai_server, _ = upstreams
    check(*race(tenant, make_key, openai_server, stream=True), answered_as="done")


@pytest.fixture
def failing_turn_storage(db: None) -> None:
    """Storing a turn fails in the database, as with a full disk: a real error, after the charge."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_message() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'could not extend file'; END $$; "
            "CREATE TRIGGER refuse_message BEFORE INSERT ON chat_message "
            "FOR EACH ROW EXECUTE FUNCTION refuse_message()"
        )  # rolled back with the test's transaction


def test_a_stream_whose_turn_cannot_be_stored_ends_with_an_error_event(
    tenant, chat_client, upstreams, failing_turn_storage
):
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    assert {name for name, _ in events[:-1]} == {"delta"}
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "server_error"
    assert UsageEntry.objects.get().kind == "completion"  # the answer was delivered: it stays charged
