# A model worker: engram-memory with torch. CPU by default (torch 2.13.0's CPU wheel from the
# wheelhouse). For a GPU host build with a CUDA base and torch from PyTorch's index, e.g.
#   docker build -f docker/worker.Dockerfile --build-arg BASE=<cuda image with python3.11> \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG TORCH_INDEX=""
COPY docker/wheelhouse /wheels
RUN python3 -m venv /opt/engram \
 && if [ -n "$TORCH_INDEX" ]; then /opt/engram/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0; fi \
 && /opt/engram/bin/pip install --no-cache-dir --no-index --find-links /wheels "engram-memory[worker]" \
 && /opt/engram/bin/python -m protos

FROM ${BASE}
RUN useradd --create-home --uid 10001 engram
COPY --from=build /opt/engram /opt/engram
ENV PATH=/opt/engram/bin:$PATH PYTHONUNBUFFERED=1
USER engram
WORKDIR /home/engram
ENTRYPOINT ["engram-memory"]
CMD ["worker", "--target", "memory:50051"]
