# One image for every Percept role; the command picks it (`percept gateway`, `percept consumer`, `percept serve`).
# For GPU consumers, build with --build-arg TENSORFLOW="tensorflow[and-cuda]" on a CUDA base image.
FROM python:3.11-slim
ARG TENSORFLOW=tensorflow-cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2 PERCEPT_HOST=0.0.0.0 PERCEPT_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY engine engine
COPY store store
COPY broker broker
COPY gateway gateway
COPY consumers consumers
COPY percept percept
RUN pip install "${TENSORFLOW}" . \
    && useradd --create-home --uid 10001 percept && mkdir /data && chown percept /data
USER percept
VOLUME /data
EXPOSE 8000
CMD ["percept", "serve"]
