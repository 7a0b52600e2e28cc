"""The one settings module. Everything that differs between deployments comes from the environment.

`make run` / `make test` (config/devserver.py) fill DATABASE_URL and REDIS_URL for a fresh machine.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / ".data"


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)


def dev_secret_key() -> str:
    """A per-checkout secret for local runs, generated once and kept out of the repository."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        DATA_DIR.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = dev_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "tenants",
    "prompts",
    "billing",
    "chat",
    "monitoring",
]

MIDDLEWARE = [
    # First: every later middleware's log lines carry the request id.
    "config.logs.RequestContextMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "tenants.middleware.ApiNotFoundMiddleware",
    "tenants.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
# Candidates an HNSW scan keeps, set on every database connection. pgvector's default of 40 misses
# whole clusters for some questions; 200 found them all in bench/bench_retrieval.py for ~1 ms more.
RAG_HNSW_EF_SEARCH = env_int("RAG_HNSW_EF_SEARCH", 200)
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
            conn_health_checks=True,
        )
    }
    if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL (pgvector is required)")
    database_options = DATABASES["default"].setdefault("OPTIONS", {})
    # A database that drops packets must not hang a request (or the background thread) for minutes.
    database_options.setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT_SECONDS", 5))
    database_options["options"] = (
        database_options.get("options", "") + f" -c hnsw.ef_search={RAG_HNSW_EF_SEARCH}"
    ).strip()
    # Django's backend with a health check that costs no query when the connection is fine, and the
    # budget and trace statements prepared (tenants/postgres/base.py): psycopg prepares a statement on its 5th
    # run on a connection (Django turns that off by default). Behind PgBouncer in transaction mode
    # before 1.22, or without max_prepared_statements, set DB_PREPARED_STATEMENTS=0.
    DATABASES["default"]["ENGINE"] = "tenants.postgres"
    database_options["prepare_threshold"] = 5 if env_bool("DB_PREPARED_STATEMENTS", True) else None
else:
    # Importable without a database (mypy, `manage.py help`); any query fails with Django's clear error.
    # `make run` / `make test` always provide DATABASE_URL.
    DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, rate limits, Celery broker ---------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if not REDIS_URL:
    if not DEBUG:
        # Rate limits, circuits and caches fail open without Redis: a deployment that forgot the
        # setting would run with none of them, quietly, against a localhost that has no Redis.
        raise ImproperlyConfigured("REDIS_URL must be set when DEBUG is off")
    REDIS_URL = "redis://127.0.0.1:6379/0"
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "llmb",
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            # Fail fast: a dead Redis must show up in /health within a second, not hang a worker.
            "SOCKET_CONNECT_TIMEOUT": 1,
            "SOCKET_TIMEOUT": 1,
        },
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "sweep-expired-reservations": {"task": "billing.tasks.sweep_expired_reservations", "schedule": 60.0},
    "generate-monthly-invoices": {
        "task": "billing.tasks.generate_monthly_invoices",
        "schedule": crontab(minute=15, hour=0, day_of_month=1),
    },
    "finalize-due-invoices": {
        "task": "billing.tasks.finalize_due_invoices",
        "schedule": crontab(minute=30, hour=1),
    },
    # Tenants that grew or shrank past RAG_TENANT_INDEX_MIN_CHUNKS get or lose their vector index.
    "sync-vector-indexes": {"task": "chat.tasks.vector_indexes_sync_task", "schedule": 900.0},
    "purge-semantic-cache": {"task": "chat.tasks.semantic_cache_purge_task", "schedule": 3600.0},
    "fail-stalled-documents": {"task": "chat.tasks.documents_fail_stalled_task", "schedule": 300.0},
    # Traces past each tenant's retention, with their spans and feedback, in bounded batches.
    "apply-trace-retention": {"task": "monitoring.tasks.trace_retention_task", "schedule": 3600.0},
}
CELERY_TIMEZONE = "UTC"
# The worker and beat log through LOGGING below (JSON in production), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Rate limits (django-ratelimit on the Redis cache) ----------------------------------------------
RATELIMIT_USE_CACHE = "default"
RATELIMIT_ENABLE = env_bool("RATELIMIT_ENABLE", True)

# --- Tenants and API keys -------------------------------------------------------------------------
API_KEY_PREFIX = "tk"
# last_used_at is written at most once per this many seconds per key, not on every request.
API_KEY_LAST_USED_RESOLUTION = timedelta(seconds=env_int("API_KEY_LAST_USED_RESOLUTION_SECONDS", 60))
API_KEY_ROTATION_GRACE = timedelta(seconds=env_int("API_KEY_ROTATION_GRACE_SECONDS", 24 * 3600))
API_KEY_ROTATION_MAX_GRACE = timedelta(days=30)
TENANT_DEFAULT_REQUESTS_PER_MINUTE = env_int("TENANT_DEFAULT_REQUESTS_PER_MINUTE", 600)
TENANT_DEFAULT_TOKENS_PER_MINUTE = env_int("TENANT_DEFAULT_TOKENS_PER_MINUTE", 200_000)
TENANT_DEFAULT_MONTHLY_TOKEN_QUOTA = env_int("TENANT_DEFAULT_MONTHLY_TOKEN_QUOTA", 50_000_000)
TENANT_DEFAULT_ALLOWED_MODELS = env_list("TENANT_DEFAULT_ALLOWED_MODELS", "*")
# Largest request body the JSON API accepts; larger ones get 413 before any parsing.
API_MAX_REQUEST_BYTES = env_int("API_MAX_REQUEST_BYTES", 1024 * 1024)

# --- After-response bookkeeping (tenants/background.py) -------------------------------------------
# Traces and exact-cache fills run on one background thread per process.
# Traces deleted per statement by the retention task (each batch its own short transaction).
TRACE_RETENTION_BATCH_SIZE = env_int("TRACE_RETENTION_BATCH_SIZE", 5000)
BACKGROUND_QUEUE_SIZE = env_int("BACKGROUND_QUEUE_SIZE", 10_000)  # beyond it, jobs are dropped (counted)
BACKGROUND_FLUSH_SECONDS = float(env_str("BACKGROUND_FLUSH_SECONDS", "10"))  # drained for this long at exit
# How long the thread lets jobs gather once one arrives: one batch (one trace insert) per window.
BACKGROUND_BATCH_SECONDS = float(env_str("BACKGROUND_BATCH_SECONDS", "0.1"))
# On: jobs run in the caller's thread instead (the tests: their transaction is invisible elsewhere).
BACKGROUND_INLINE = env_bool("BACKGROUND_INLINE", False)

# --- Prompts ----------------------------------------------------------------------------------------
# How often a worker re-checks (one Redis GET) that its cached prompt snapshot is still current.
PROMPT_CACHE_CHECK_SECONDS = env_int("PROMPT_CACHE_CHECK_SECONDS", 2)

# --- Billing ------------------------------------------------------------------------------------------
# A reservation not settled within this time (a crashed worker) is released by the sweep task.
BUDGET_RESERVATION_TTL_SECONDS = env_int("BUDGET_RESERVATION_TTL_SECONDS", 900)
BUDGET_WEBHOOK_TIMEOUT_SECONDS = env_int("BUDGET_WEBHOOK_TIMEOUT_SECONDS", 10)
# Drafts for a month are finalized this many days after it ends (corrections can land meanwhile).
INVOICE_FINALIZE_GRACE_DAYS = env_int("INVOICE_FINALIZE_GRACE_DAYS", 3)
# Who issues the invoices (printed on each one) and when a finalized one is due.
INVOICE_ISSUER_NAME = env_str("INVOICE_ISSUER_NAME", "LLM Platform")
INVOICE_ISSUER_ADDRESS = env_str("INVOICE_ISSUER_ADDRESS")
INVOICE_PAYMENT_TERMS_DAYS = env_int("INVOICE_PAYMENT_TERMS_DAYS", 30)

# --- LLM providers and the chat pipeline ------------------------------------------------------------
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL") or None
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL") or None
# provider:model entries; empty: the configured providers' small models, then local:local.
CHAT_DEFAULT_FALLBACK_CHAIN = env_list("CHAT_DEFAULT_FALLBACK_CHAIN")
# The HTTP transport under both SDKs: `stdlib` (chat/transport.py: http.client, less CPU per call) or
# `httpx`, the SDKs' own default (httpcore2).
PROVIDER_HTTP_TRANSPORT = env_str("PROVIDER_HTTP_TRANSPORT", "stdlib")
if PROVIDER_HTTP_TRANSPORT not in ("stdlib", "httpx"):
    raise ImproperlyConfigured("PROVIDER_HTTP_TRANSPORT must be 'stdlib' or 'httpx'")
CHAT_CONNECT_TIMEOUT_SECONDS = float(env_str("CHAT_CONNECT_TIMEOUT_SECONDS", "5"))
CHAT_REQUEST_TIMEOUT_SECONDS = float(env_str("CHAT_REQUEST_TIMEOUT_SECONDS", "60"))
CHAT_FIRST_TOKEN_TIMEOUT_SECONDS = float(env_str("CHAT_FIRST_TOKEN_TIMEOUT_SECONDS", "20"))
CHAT_STREAM_TIMEOUT_SECONDS = float(env_str("CHAT_STREAM_TIMEOUT_SECONDS", "300"))
CHAT_MAX_RETRIES = env_int("CHAT_MAX_RETRIES", 2)  # per provider, after the first attempt
CHAT_RETRY_BASE_DELAY_SECONDS = float(env_str("CHAT_RETRY_BASE_DELAY_SECONDS", "0.25"))
CHAT_RETRY_MAX_DELAY_SECONDS = float(env_str("CHAT_RETRY_MAX_DELAY_SECONDS", "4"))
CIRCUIT_FAILURE_THRESHOLD = env_int("CIRCUIT_FAILURE_THRESHOLD", 5)
CIRCUIT_WINDOW_SECONDS = env_int("CIRCUIT_WINDOW_SECONDS", 60)
CIRCUIT_COOLDOWN_SECONDS = env_int("CIRCUIT_COOLDOWN_SECONDS", 30)
# How long a process trusts a clean (closed, failure-free) circuit reading before asking Redis again.
CIRCUIT_STATE_CHECK_SECONDS = float(env_str("CIRCUIT_STATE_CHECK_SECONDS", "1"))
CHAT_DEFAULT_MAX_TOKENS = env_int("CHAT_DEFAULT_MAX_TOKENS", 512)
CHAT_MAX_TOKENS_LIMIT = env_int("CHAT_MAX_TOKENS_LIMIT", 16_384)
CHAT_MAX_INPUT_TOKENS = env_int("CHAT_MAX_INPUT_TOKENS", 100_000)
CHAT_HISTORY_TOKEN_BUDGET = env_int("CHAT_HISTORY_TOKEN_BUDGET", 3000)
# The exact cache only answers requests at or below this temperature (deterministic enough).
CHAT_CACHE_MAX_TEMPERATURE = float(env_str("CHAT_CACHE_MAX_TEMPERATURE", "0.2"))
IDEMPOTENCY_TTL_SECONDS = env_int("IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
# How long a key stays claimed by a request still running (409 for its retries meanwhile): past a
# default fallback chain that times out everywhere (two remote targets, 1 + CHAT_MAX_RETRIES = 3
# attempts each, 60 s, and the backoff). A request whose process died, or a stream whose client
# left, keeps its key claimed that long.
IDEMPOTENCY_PENDING_SECONDS = env_int("IDEMPOTENCY_PENDING_SECONDS", 420)

# --- Documents, embeddings and retrieval (RAG) -----------------------------------------------------
# One embedder and one vector size per deployment: chunks of different embedders are not comparable.
# Changing either needs `manage.py reembed` (checked at start-up: `manage.py check --database default`).
EMBEDDING_BACKEND = env_str("EMBEDDING_BACKEND", "hashing")  # hashing | openai | minilm
EMBEDDING_DIMENSIONS = env_int("EMBEDDING_DIMENSIONS", 384)
EMBEDDING_OPENAI_MODEL = env_str("EMBEDDING_OPENAI_MODEL", "text-embedding-3-small")
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 128)
EMBEDDING_MAX_RETRIES = env_int("EMBEDDING_MAX_RETRIES", 2)  # the SDK's, per batch
# A query embedding a chat request waits on (RAG, semantic cache): one attempt, this long at most.
EMBEDDING_QUERY_TIMEOUT_SECONDS = float(env_str("EMBEDDING_QUERY_TIMEOUT_SECONDS", "10"))
QUERY_EMBEDDING_CACHE_SECONDS = env_int("QUERY_EMBEDDING_CACHE_SECONDS", 24 * 3600)
RAG_MAX_UPLOAD_BYTES = env_int("RAG_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
# Django's own cap on a body read into memory (request.body, which DRF reads JSON from). Every body is
# bounded before that by tenants.middleware.RequestSizeLimitMiddleware, per path (API_MAX_REQUEST_BYTES,
# a document upload's own limit, Django's default 2.5 MiB elsewhere); this cap is the largest of those,
# or Django would refuse a JSON upload the API accepts (RequestDataTooBig, a 400) past 2.5 MiB.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_REQUEST_BYTES, 6 * RAG_MAX_UPLOAD_BYTES + 65_536)
RAG_CHUNK_TOKENS = env_int("RAG_CHUNK_TOKENS", 300)
RAG_CHUNK_OVERLAP_TOKENS = env_int("RAG_CHUNK_OVERLAP_TOKENS", 50)
# A document pending or processing without progress for this long is marked failed (can be retried).
RAG_INGEST_STALLED_SECONDS = env_int("RAG_INGEST_STALLED_SECONDS", 1800)
RAG_TOP_K = env_int("RAG_TOP_K", 5)
RAG_CONTEXT_TOKENS = env_int("RAG_CONTEXT_TOKENS", 1500)  # retrieved text put into the prompt, at most
# Hybrid retrieval (chat/retrieval.py): each ranking (embeddings, keywords) contributes this many
# candidates to the reciprocal rank fusion, whose constant is RAG_RRF_K.
RAG_CANDIDATES = env_int("RAG_CANDIDATES", 40)
RAG_RRF_K = env_int("RAG_RRF_K", 60)
# Evidence: a chunk is retrieved only with a cosine similarity of at least RAG_MIN_SCORE (default: the
# embedder's floor below) or at least RAG_MIN_KEYWORD_COVERAGE of the question's content words.
# Floors calibrated in bench/bench_relevance.py on CPython's documentation: above the best chunk of
# every question the corpus cannot answer (hashing: max 0.29; minilm: max 0.23, while 92% of the
# answering chunks score >= 0.30). openai is not calibrated here (no key): 0.40 is a guess to check.
RAG_MIN_SCORE = float(env_str("RAG_MIN_SCORE", "")) if env_str("RAG_MIN_SCORE", "") else None
RAG_MIN_SCORE_DEFAULTS = {"hashing": 0.30, "minilm": 0.30, "openai": 0.40}
RAG_MIN_KEYWORD_COVERAGE = float(env_str("RAG_MIN_KEYWORD_COVERAGE", "0.5"))
# Tenants with more chunks than this get their own HNSW index (a partial index on tenant_id); smaller
# tenants are searched exactly. Both give full recall at any tenant size (bench/bench_retrieval.py).
# hnsw.ef_search comes from RAG_HNSW_EF_SEARCH (see DATABASES).
RAG_TENANT_INDEX_MIN_CHUNKS = env_int("RAG_TENANT_INDEX_MIN_CHUNKS", 10_000)
RAG_INDEX_BUILD_MEMORY = env_str("RAG_INDEX_BUILD_MEMORY", "512MB")  # maintenance_work_mem of a build
SEMANTIC_CACHE_TTL_SECONDS = env_int("SEMANTIC_CACHE_TTL_SECONDS", 24 * 3600)

# --- REST framework and OpenAPI -------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.HasRequiredScope"],
    "DEFAULT_PARSER_CLASSES": ["tenants.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "tenants.pagination.LimitOffsetPagination",
    "DEFAULT_SCHEMA_CLASS": "tenants.openapi.ApiAutoSchema",
    "EXCEPTION_HANDLER": "tenants.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM backend API",
    "DESCRIPTION": "Multi-tenant LLM chat, prompts, documents, billing and monitoring.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several `status` fields with different choices: each enum named for what it is.
    "ENUM_NAME_OVERRIDES": {
        "TraceStatusEnum": "monitoring.models.TraceStatus",
        "DocumentStatusEnum": ["pending", "processing", "ready", "failed"],
    },
}

# --- Auth, i18n, static ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Dates as 2026-12-02 and times as 2026-12-02 06:30 UTC on every admin page (config/formats/).
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (`manage.py check --deploy` passes with DEBUG=0) ------------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Probes and scrapers talk plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^health", r"^metrics$"]
if env_bool("BEHIND_TLS_PROXY", not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# /metrics needs `Authorization: Bearer <METRICS_BEARER_TOKEN>` when this is set.
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN")
# A `tenant` label (the slug) on the request, token, cost and refusal metrics: one series per tenant
# and label set, so off by default; read when the process starts.
METRICS_TENANT_LABEL = env_bool("METRICS_TENANT_LABEL", False)
PROMETHEUS_EXPORT_MIGRATIONS = False

# Set, every trace is also exported as OpenTelemetry spans over OTLP/HTTP (monitoring/otel.py). The
# SDK reads this and the other standard variables itself (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS,
# OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_BSP_*...); unset, monitoring/otel.py does not import the SDK.
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT")

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "llm-backend@localhost")

# One line per event on stderr: JSON in production (DEBUG=0), text in development; both carry the
# request id, tenant and trace id of the request they belong to, and redact API keys (config/logs.py).
LOG_FORMAT = env_str("LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'json' or 'plain'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.logs.RequestContextFilter"}},
    "formatters": {
        "plain": {
            "()": "config.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s",
        },
        "json": {"()": "config.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The SDKs' HTTP clients log every request at INFO: traces and metrics already record them.
    "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpx2", "openai", "anthropic")},
}
