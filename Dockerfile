# One image for every part of llmcloud; the command picks the part:
#   docker run IMAGE engine | web | socks | up
# Dependencies come from requirements/main.lock with hashes, as in scripts/install.
# For an NVIDIA GPU, build with --build-arg CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA base image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG CMAKE_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    CMAKE_ARGS=${CMAKE_ARGS}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/main.lock requirements/main.lock
RUN python -m venv /opt/llmcloud/.venv \
    && /opt/llmcloud/.venv/bin/pip install --quiet --require-hashes -r requirements/main.lock
COPY pyproject.toml README.md ./
COPY src src
RUN /opt/llmcloud/.venv/bin/pip install --quiet --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE}
# libgomp1: OpenMP runtime that llama.cpp's CPU backend links against.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system llmcloud \
    && useradd --system --gid llmcloud --home-dir /var/lib/llmcloud --shell /usr/sbin/nologin llmcloud \
    && install -d -o llmcloud -g llmcloud -m 0700 /var/lib/llmcloud
COPY --from=build /opt/llmcloud/.venv /opt/llmcloud/.venv
ENV PATH=/opt/llmcloud/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LLMCLOUD_DATA_DIR=/var/lib/llmcloud
USER llmcloud
VOLUME ["/var/lib/llmcloud"]
# web app, engine, SOCKS proxy
EXPOSE 8080 11434 1080
ENTRYPOINT ["llmcloud"]
CMD ["up"]
