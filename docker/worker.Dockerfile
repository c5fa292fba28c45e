# A model worker: engram-memory with torch. CPU by default (torch 2.13.0's CPU wheel from the
# wheelhouse). For a GPU host build with a CUDA base and torch from PyTorch's index, e.g.
#   ENGRAM_BASE_IMAGE=<cuda image with python3.11> ENGRAM_TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     docker/build_images.sh
# Build with docker/build_images.sh: it tags the `deps` stage (torch: the big layer) too, so a new
# project wheel rebuilds only the last, small layer and leaves no untagged image behind.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS deps
LABEL engram-memory.stage=deps
ARG TORCH_INDEX=""
COPY docker/wheelhouse/deps /wheels/deps
RUN python3 -m venv /opt/engram \
 && if [ -n "$TORCH_INDEX" ]; then /opt/engram/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0; fi \
 && /opt/engram/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps -r /wheels/deps/worker.txt

FROM ${BASE}
LABEL engram-memory.image=worker
RUN useradd --create-home --uid 10001 engram
COPY --from=deps /opt/engram /opt/engram
COPY docker/wheelhouse/project /wheels/project
RUN /opt/engram/bin/pip install --no-cache-dir --no-index --no-deps /wheels/project/engram_memory-*.whl \
 && /opt/engram/bin/python -m protos && rm -rf /wheels
ENV PATH=/opt/engram/bin:$PATH PYTHONUNBUFFERED=1
USER engram
WORKDIR /home/engram
ENTRYPOINT ["engram-memory"]
CMD ["worker", "--target", "memory:50051"]
