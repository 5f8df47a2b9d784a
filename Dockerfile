# Vigil: build with the Rust toolchain, run on a small Debian image as a non-root user.
#   docker build -t vigil .
#   docker run --rm -v $PWD/certs:/etc/vigil/certs:ro -v $PWD/vigil.toml:/etc/vigil/vigil.toml:ro \
#     --user "$(id -u):$(id -g)" -p 8443:8443 vigil
# (`vigil certs` writes a directory and keys that only their owner can read: run as the owner.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin vigil \
 && strip target/release/vigil

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 vigil \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --shell /usr/sbin/nologin vigil
COPY --from=build /src/target/release/vigil /usr/local/bin/vigil
USER 65532:65532
WORKDIR /etc/vigil
EXPOSE 8443 9901
# The probe reads the admin address from the configuration (0.0.0.0 is probed on loopback).
# With a TLS admin listener (admin.client_ca) it speaks TLS, trusting the certificate the
# configuration names, and needs a client certificate the listener allows: add
# "--cert", "/etc/vigil/probe.pem", "--key", "/etc/vigil/probe.key". A failing probe prints why.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
  CMD ["vigil", "health", "--config", "/etc/vigil/vigil.toml", "--path", "/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vigil"]
CMD ["run", "--config", "/etc/vigil/vigil.toml"]
