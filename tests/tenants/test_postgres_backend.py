"""The health check of tenants.postgres: no query for a healthy idle connection, and a connection
the server closed is dropped before the request's first query (so the request gets a new one)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django.db import connection, connections

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def second_connection() -> Iterator[object]:
    """A connection of its own, with health checks on, as a persistent request connection has them."""
    wrapper = connections.create_connection("default")
    wrapper.health_check_enabled = True  # type: ignore[attr-defined]  # Django's, not in django-stubs
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def last_query_of(backend_pid: int) -> str | None:
    """The backend's latest statement; None once the backend is gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [backend_pid])
        row = cursor.fetchone()
    return None if row is None else row[0]


def test_a_healthy_connection_is_checked_without_a_query(second_connection):
    with second_connection.cursor() as cursor:
        cursor.execute("SELECT 42")
    raw = second_connection.connection
    second_connection.health_check_done = False  # a new request begins
    second_connection.close_if_health_check_failed()
    assert second_connection.connection is raw
    assert last_query_of(raw.info.backend_pid) == "SELECT 42"


def test_a_connection_the_server_closed_is_dropped_before_use(second_connection):
    pid = second_connection.connection.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 5
    while last_query_of(pid) is not None and time.monotonic() < deadline:  # wait until it has gone
        time.sleep(0.01)
    second_connection.health_check_done = False
    second_connection.close_if_health_check_failed()
    assert second_connection.connection is None
    with second_connection.cursor() as cursor:  # the next query connects afresh
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_connection_inside_a_transaction_gets_the_stock_check(second_connection):
    second_connection.set_autocommit(False)
    with second_connection.cursor() as cursor:
        cursor.execute("SELECT 7")
    second_connection.health_check_done = False
    second_connection.close_if_health_check_failed()
    assert last_query_of(second_connection.connection.info.backend_pid) == "SELECT 1"
    second_connection.rollback()
    second_connection.set_autocommit(True)


def prepared_statements(wrapper) -> list[str]:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_the_prepared_cursor_has_postgres_plan_a_repeated_statement_once(second_connection):
    for value in range(6):  # psycopg prepares a statement on its 5th run (prepare_threshold)
        with second_connection.cursor() as cursor:
            cursor.execute("SELECT %(value)s::int + 1", {"value": value})
    assert prepared_statements(second_connection) == []  # Django's cursors bind on the client
    for value in range(6):
        with second_connection.prepared_cursor() as cursor:
            cursor.execute("SELECT %(value)s::int + 2", {"value": value})
            assert cursor.fetchone() == (value + 2,)
    assert prepared_statements(second_connection) == ["SELECT $1::int + 2"]
