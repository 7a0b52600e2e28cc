"""Asynchronous commit for writes that may be lost in an operating-system crash, and the prepared
cursor of the statements run on every chat request.

A statement run outside `transaction.atomic` is its own transaction, and its COMMIT waits for the WAL
to reach the disk (about 0.2-0.5 ms here). For a write whose loss in an OS crash or power failure is
harmless, the statement can turn that wait off for its own transaction: the SQL includes the CTE
below and passes `async_commit_param()` as `%(async_commit)s`. PostgreSQL still writes the WAL in
order, so the next durable commit (a ledger entry) makes every earlier write durable as well; what
a crash of the server or the machine can lose is the last few hundred milliseconds of such writes
(at most three `wal_writer_delay`s). Inside a larger transaction the setting is left as it is,
since the transaction's other writes may need to be durable.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.utils import CursorWrapper

from tenants.postgres.base import DatabaseWrapper as PreparingDatabaseWrapper

ASYNC_COMMIT_CTE = (
    "async_commit AS (SELECT set_config('synchronous_commit', "
    "COALESCE(%(async_commit)s, current_setting('synchronous_commit')), true))"
)


def async_commit_param() -> str | None:
    """'off' for a statement that is its own transaction; None (unchanged) inside a larger one."""
    return "off" if connection.get_autocommit() and not connection.in_atomic_block else None


def prepared_cursor() -> CursorWrapper:
    """A cursor for a statement run on every request: PostgreSQL plans it once per connection
    (tenants/postgres/base.py). Any other backend gives its ordinary cursor."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    if isinstance(wrapper, PreparingDatabaseWrapper):
        return wrapper.prepared_cursor()
    return wrapper.cursor()
