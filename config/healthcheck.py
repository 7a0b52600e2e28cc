"""Container health checks (compose.yaml), kept out of Django so a probe costs milliseconds.

    python -m config.healthcheck web      GET /health on this container's gunicorn (readiness)
    python -m config.healthcheck broker   the Celery broker answers PING (beat's check)

Exit status 0 when healthy, 1 otherwise, with the reason on stderr.
"""

from __future__ import annotations

import http.client
import os
import sys
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 5


def probe_host() -> str:
    """The Host header to send: Django answers 400 to a host outside ALLOWED_HOSTS, and a probe on
    127.0.0.1 is not one of them in production. A leading-dot entry matches its subdomains."""
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip()
        if host and host != "*":
            return "health" + host if host.startswith(".") else host
    return "localhost"


def check_web() -> str | None:
    port = int(os.environ.get("PORT", "8000"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_SECONDS)
    try:
        # /health is exempt from SECURE_SSL_REDIRECT: plain HTTP inside the container is fine.
        conn.request("GET", "/health", headers={"Host": probe_host()})
        response = conn.getresponse()
        body = response.read(500).decode(errors="replace")
    except OSError as exc:
        return f"web: {exc}"
    finally:
        conn.close()
    return None if response.status == 200 else f"web: HTTP {response.status} {body}"


def check_broker() -> str | None:
    import redis

    url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "")
    if not url:
        return "broker: neither CELERY_BROKER_URL nor REDIS_URL is set"
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
    try:
        client.ping()
    except redis.RedisError as exc:
        # Never the URL: it carries the password.
        return f"broker at {urlsplit(url).hostname}: {type(exc).__name__}"
    finally:
        client.close()
    return None


CHECKS = {"web": check_web, "broker": check_broker}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    problem = CHECKS[argv[0]]()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
