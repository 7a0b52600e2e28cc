# syntax=docker/dockerfile:1
# The production image: web (gunicorn), worker and beat (Celery) and the one-shot migrate all run it
# with different commands (compose.yaml). Build: docker build -t llm-backend .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: wheels for every runtime dependency, built where the compilers are ----------------------
FROM ${PYTHON_IMAGE} AS builder
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml .
# Only [project].dependencies: the dev tools and the embedded PostgreSQL/Redis of `make run`
# (the `dev` and `embedded` extras) stay out of the image.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

# --- runtime: the wheels, the runtime libraries, the code; no compiler, not root ----------------------
FROM ${PYTHON_IMAGE}
# WeasyPrint (invoice PDFs) loads Pango and HarfBuzz at run time; DejaVu is the fallback font.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    DEBUG=0 \
    HOST=0.0.0.0 \
    PORT=8000
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/build/requirements.txt,target=/tmp/requirements.txt \
    pip install --no-cache-dir --no-index --find-links /wheels -r /tmp/requirements.txt
WORKDIR /app
COPY manage.py pyproject.toml ./
COPY config config
COPY tenants tenants
COPY prompts prompts
COPY chat chat
COPY billing billing
COPY monitoring monitoring
COPY templates templates
# Static files are part of the image (WhiteNoise serves them, hashed and compressed). The values
# below only let the settings load for this one command; the real ones come at run time.
RUN SECRET_KEY=collectstatic-only REDIS_URL=redis://unused:6379/0 \
    python manage.py collectstatic --noinput --verbosity 0
# Its home is writable: gunicorn keeps its control socket there (~/.gunicorn).
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "config.healthcheck", "web"]
CMD ["python", "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"]
