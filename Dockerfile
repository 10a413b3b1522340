# relay container image: `docker build -t relay .`, then `docker run relay run|schema apply|…`.
# Two stages so the runtime image carries installed wheels only, no build tools or sources.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# README.md is the package's long description (pyproject `readme`); relay/cql is a symlink to
# ../cql, so cql/ must be copied for the schema files to end up in the wheel.
COPY pyproject.toml README.md ./
COPY cql ./cql
COPY relay ./relay
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels relay \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay
# Numeric ids so Kubernetes' runAsNonRoot can verify the user without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# /metrics, /health, /ready, /status ([metrics] port).
EXPOSE 9100
# urllib instead of curl: the slim image has no curl, and Python is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/health', timeout=4)"]

# Exec form: relay is PID 1 and receives SIGTERM itself (first = graceful drain, DESIGN §2).
ENTRYPOINT ["relay"]
CMD ["run"]
