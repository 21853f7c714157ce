# syntax=docker/dockerfile:1
# Build: docker build -t orgsync .
# Run:   docker run -e DATABASE_URL=postgres://user:pass@db:5432/orgsync -p 8080:8080 orgsync

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY . .
# The sqlx query macros read the committed .sqlx/ data: no database needed to build.
ENV SQLX_OFFLINE=true
RUN touch src/main.rs src/lib.rs && cargo build --release --locked && strip target/release/orgsync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home orgsync
COPY --from=build /src/target/release/orgsync /usr/local/bin/orgsync
USER orgsync
ENV ORGSYNC_LISTEN=0.0.0.0:8080 ORGSYNC_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["orgsync", "healthcheck"]
ENTRYPOINT ["orgsync"]
CMD ["serve"]
