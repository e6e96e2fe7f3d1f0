# One image for the three services; pick the binary with the container's command.
FROM rust:1.90-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake libcurl4-openssl-dev libsasl2-dev libssl-dev zlib1g-dev libzstd-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ingest -p batcher -p uploader \
    && install -D -t /out target/release/ingest target/release/batcher target/release/uploader

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates curl libssl3 libsasl2-2 libzstd1 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin activity
COPY --from=build /out/ /usr/local/bin/
USER 10001
ENV ACTIVITY_LOG_FORMAT=json
