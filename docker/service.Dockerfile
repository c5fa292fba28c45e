# The memory service: engram-memory without torch (load, serve, info, drop, health).
# BASE: any Debian bookworm image with Python 3.11 and its venv module; python:3.11-slim-bookworm from
# a registry, or the local base the offline smoke test builds (docker/smoke_test.sh).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# wheels of engram-memory and every dependency (docker/build_wheelhouse.sh): no network needed here
COPY docker/wheelhouse /wheels
RUN python3 -m venv /opt/engram \
 && /opt/engram/bin/pip install --no-cache-dir --no-index --find-links /wheels engram-memory \
 && /opt/engram/bin/python -m protos

FROM ${BASE}
RUN useradd --create-home --uid 10001 engram && mkdir -p /data && chown engram /data
COPY --from=build /opt/engram /opt/engram
ENV PATH=/opt/engram/bin:$PATH PYTHONUNBUFFERED=1
USER engram
WORKDIR /home/engram
EXPOSE 50051 9464
ENTRYPOINT ["engram-memory"]
CMD ["serve", "--db", "/data/tables", "--host", "0.0.0.0"]
