# One image for every process of the service (see docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN mkdir service tasks web \
    && touch README.md service/__init__.py tasks/__init__.py web/__init__.py \
    && pip install -e '.[prod]'

# Editable on purpose: alembic.ini and migrations/ stay beside the code that finds them.
COPY . .
RUN pip install --no-deps -e '.[prod]' \
    && useradd --system --uid 10001 --home-dir /app app \
    && mkdir -p var && chown app var

USER app
EXPOSE 8000 5555
CMD ["gunicorn", "--bind=0.0.0.0:8000", "--workers=2", "--access-logfile=-", "web:create_app()"]
