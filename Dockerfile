# syntax=docker/dockerfile:1
#
# kmirror image: `docker build -t kmirror .`, or `docker compose up` (see
# docker-compose.yml). The binary links the system OpenSSL (libssl3) and
# zlib; librdkafka (vendor/rdkafka-sys, with the fixes in
# vendor/librdkafka.patch) and zstd are built from source into it.

FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY vendor ./vendor
# Cache the registry and the target dir between builds (BuildKit), and
# copy the binary out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kmirror \
    && install -m 0755 target/release/kmirror /usr/local/bin/kmirror

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kmirror \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kmirror \
    && mkdir -p /etc/kmirror
COPY --from=builder /usr/local/bin/kmirror /usr/local/bin/kmirror
# The kmirror user (uid 10001); numeric so that runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/kmirror"]
CMD ["run", "--config", "/etc/kmirror/kmirror.toml"]
