# syntax=docker/dockerfile:1
# Build: wheels for the project and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY actors ./actors
COPY providers ./providers
COPY policy ./policy
COPY infra ./infra
COPY stores ./stores
COPY sandbox ./sandbox
COPY bench ./bench
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run: a non-root user, the wheels installed, the configs beside them.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tidings
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY configs /app/configs
ENV TIDINGS_CONFIG_DIR=/app/configs \
    TIDINGS_ENV=production \
    RAY_USAGE_STATS_ENABLED=0 \
    PYTHONUNBUFFERED=1
USER tidings
WORKDIR /home/tidings
EXPOSE 8080
# Readiness, not liveness: NATS, PostgreSQL, the actors, and the ingest and release loops
# (/readyz answers loopback clients by default, as this check is)
HEALTHCHECK --interval=15s --timeout=8s --start-period=90s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=7)"
ENTRYPOINT ["tidings"]
CMD ["up"]
