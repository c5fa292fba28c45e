# The memory service: engram-memory without torch (load, serve, info, drop, health, stats).
# BASE: any Debian bookworm image with Python 3.11 and its venv module; python:3.11-slim-bookworm from
# a registry, or the local base the offline smoke test builds (docker/smoke_test.sh).
# Build with docker/build_images.sh: it tags the `deps` stage too, so rebuilding after a new project
# wheel reuses it and leaves no untagged image behind.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS deps
LABEL engram-memory.stage=deps
# every dependency from the wheelhouse (docker/build_wheelhouse.sh): no network needed here
COPY docker/wheelhouse/deps /wheels/deps
RUN python3 -m venv /opt/engram \
 && /opt/engram/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps -r /wheels/deps/service.txt

FROM ${BASE}
LABEL engram-memory.image=service
RUN useradd --create-home --uid 10001 engram && mkdir -p /data && chown engram /data
COPY --from=deps /opt/engram /opt/engram
# engram-memory's own wheel last: a new one rebuilds only this small layer
COPY docker/wheelhouse/project /wheels/project
RUN /opt/engram/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/engram_memory-*.whl \
 && /opt/engram/bin/python -m protos && rm -rf /wheels
ENV PATH=/opt/engram/bin:$PATH PYTHONUNBUFFERED=1
USER engram
WORKDIR /home/engram
EXPOSE 50051 9464
ENTRYPOINT ["engram-memory"]
CMD ["serve", "--db", "/data/tables", "--host", "0.0.0.0"]
