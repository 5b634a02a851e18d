# One image for every role (api, worker, migrate); the command picks the role.
FROM python:3.11-slim
# Optional: the package brings the fonts for every script it accepts (CJK
# included). Debian's adds colour emoji and the rarer scripts on top.
# espeak-ng speaks narration in about 100 languages (Piper, GPL, is an
# optional extra: pip install slidefarm[piper]).
# LibreOffice renders PPTX decks (about 400 MB); build with
# --build-arg WITH_LIBREOFFICE=0 for hosts that take PDF and JSON decks only:
# their PPTX jobs fail with "pptx needs LibreOffice on the render host".
ARG WITH_LIBREOFFICE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-noto-core fonts-noto-color-emoji espeak-ng \
    $([ "$WITH_LIBREOFFICE" = 1 ] && echo libreoffice-impress-nogui) \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY workers ./workers
COPY storage ./storage
COPY core ./core
COPY celeryconfig.py gunicornconf.py alembic.ini ./
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --create-home slidefarm \
 && mkdir -p /data/output && chown slidefarm /data/output
USER slidefarm
ENV SLIDEFARM_OUTPUT_DIR=/data/output
# gunicornconf: gthread workers, and a SIGTERM drains (see the README, "Deploying without downtime").
CMD ["gunicorn", "-c", "python:gunicornconf", "-b", "0.0.0.0:8000", "api:create_app()"]
