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
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
ENTRYPOINT ["tidings"]
CMD ["up"]
