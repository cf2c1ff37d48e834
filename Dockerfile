# Build: the same toolchain and commands as CI (.ci/run), then a slim runtime.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home finguard
COPY --from=build /src/target/release/finguard /usr/local/bin/finguard
COPY conf/ /etc/finguard/
USER finguard
ENV FINGUARD_CONFIG=/etc/finguard/sidecar.toml \
    FINGUARD_LISTEN=0.0.0.0:8080 \
    FINGUARD_ADMIN=127.0.0.1:9901
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["finguard", "health"]
ENTRYPOINT ["finguard"]
CMD ["run"]
