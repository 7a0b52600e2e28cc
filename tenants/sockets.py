"""Whether a kept-alive connection's socket has something to read right now.

An idle connection (to PostgreSQL, to a provider) that is readable has either been closed by its
server or been sent something it did not ask for; either way it cannot carry the next request.
"""

from __future__ import annotations

import select
import socket


def readable_now(sock: socket.socket | int) -> bool:
    """True when a read would not block. Raises OSError or ValueError for a closed socket. Uses
    poll, not select: select cannot take file descriptors past 1023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
