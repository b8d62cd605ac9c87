# syntax=docker/dockerfile:1
# The Cedille images, built by the commands CI runs: scripts/setup.sh (here with
# --build-only: no test tools) and `cargo xtask build`, which builds the eBPF programs and
# embeds them in the agent.
#
#   docker build --target gateway -t ghcr.io/cedille/cedille-gateway:0.1.0 .
#   docker build --target agent   -t ghcr.io/cedille/cedille-agent:0.1.0 .

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl git build-essential python3 python3-venv gnupg lsb-release \
 && rm -rf /var/lib/apt/lists/*
# LLVM 22 for bpf-linker, from apt.llvm.org (Debian 12 ships an older LLVM).
RUN curl -fsSL https://apt.llvm.org/llvm-snapshot.gpg.key | gpg --dearmor -o /usr/share/keyrings/llvm.gpg \
 && echo "deb [signed-by=/usr/share/keyrings/llvm.gpg] http://apt.llvm.org/bookworm/ llvm-toolchain-bookworm-22 main" \
      > /etc/apt/sources.list.d/llvm.list
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
# Stable for the binaries; the nightly whose LLVM is 22, for the eBPF programs.
ENV CEDILLE_NIGHTLY=nightly-2026-05-20
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
 && rustup toolchain install "${CEDILLE_NIGHTLY}" --profile minimal
WORKDIR /src
COPY . .
RUN ./scripts/setup.sh --build-only && cargo xtask build

# The gateway: static-ish (glibc only), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /src/target/release/cedille-gateway /usr/local/bin/cedille-gateway
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cedille-gateway"]

# The agent: root, with the capabilities the chart grants (see helm/cedille/README.md).
FROM gcr.io/distroless/cc-debian12 AS agent
COPY --from=build /src/target/release/cedille-agent /usr/local/bin/cedille-agent
ENTRYPOINT ["/usr/local/bin/cedille-agent"]
