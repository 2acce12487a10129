# phonebot's container image: `phonebot serve` as a non-root user, nothing to build with inside.
#
#   docker build -t phonebot .
#   docker run --env-file phonebot.env -p 127.0.0.1:8000:8000 -v phonebot-data:/var/lib/phonebot phonebot
#
# BASE is any Debian-like image with python3 (3.11-3.13) and python3 -m venv: the official slim
# image in production; the tests build on a base they make themselves (no registry there).
ARG BASE=python:3.12-slim

# ---- requirements: what pyproject.toml asks for, so that only a change to it reinstalls them ----
FROM ${BASE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
open('/build-requirements.txt', 'w').write('\n'.join(p['build-system']['requires']) + '\n'); \
open('/requirements.txt', 'w').write('\n'.join(p['project']['dependencies']) + '\n')"

# ---- build: a virtual environment with phonebot and its dependencies, compiled to bytecode -----
FROM ${BASE} AS build
# A CA bundle for pip where the package index is reached through a TLS-inspecting proxy
# (mount it into the build and name it here). Build arguments stay in the image history:
# never pass a credential this way.
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
# Dependencies first, from the two lists alone: a change to the code, the README or the test
# tools in pyproject.toml reuses this layer.
COPY --from=requirements /build-requirements.txt /requirements.txt /tmp/
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && python3 -m venv /opt/phonebot \
    && /opt/phonebot/bin/pip install --no-cache-dir -r /tmp/build-requirements.txt -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY phonebot ./phonebot
# pip, setuptools and wheel leave the runtime: nothing installs or builds in the final image.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
    && /opt/phonebot/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/phonebot/bin/pip uninstall --yes pip setuptools wheel

# ---- runtime ---------------------------------------------------------------------------------
FROM ${BASE}
# A fixed numeric id, so orchestrators can check runAsNonRoot; its home is the state directory
# (the default SQLite database, ./phonebot.db, lives there). The base's own pip goes too.
RUN groupadd --system --gid 10001 phonebot \
    && useradd --system --no-log-init --uid 10001 --gid phonebot --home-dir /var/lib/phonebot \
        --create-home --shell /usr/sbin/nologin phonebot \
    && if python3 -m pip --version >/dev/null 2>&1; then \
        python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel; fi
COPY --from=build /opt/phonebot /opt/phonebot
ENV PATH=/opt/phonebot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    HEALTHCHECK_URL=http://127.0.0.1:8000/healthz
WORKDIR /var/lib/phonebot
USER 10001:10001
EXPOSE 8000
# SIGTERM drains: the replica stops taking calls and lets the ones in progress finish, for up to
# PHONEBOT_DRAIN_S (300 s by default), then says goodbye (20 s at most). Give `docker stop` longer
# than both: `-t 345`.
STOPSIGNAL SIGTERM
# Liveness only: /healthz answers while the process serves. HEALTHCHECK_URL follows `--port`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["phonebot"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
