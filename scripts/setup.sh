#!/usr/bin/env bash
# Installs what building and testing Veil needs on a fresh Debian machine. Idempotent.
set -euo pipefail

apt_packages=(build-essential cmake pkg-config ca-certificates curl openssl procps iproute2 iputils-ping tcpdump wireguard-tools iperf3 nftables swtpm swtpm-tools tpm2-tools libtss2-dev
  containerd runc containernetworking-plugins iptables conntrack socat busybox-static
  fuse3 e2fsprogs util-linux gocryptfs fio)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing Rust 1.95 with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain 1.95.0 --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# A standard userspace WireGuard peer for the mesh's interoperability test and baseline.
if ! command -v boringtun-cli >/dev/null 2>&1; then
  echo "setup: installing boringtun-cli" >&2
  cargo install --locked boringtun-cli@0.7.1
fi

# The real S3 server the object-storage proxy is tested against (later versions need rustc 1.96).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "setup: installing s3s-fs" >&2
  cargo install --locked s3s-fs@0.14.1 --features binary
fi

if [ "${VEIL_SETUP_FUZZ:-1}" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz@0.13.1
fi

# Kubernetes v1.34.4, etcd v3.6.16 and CoreDNS, built from the Go module proxy into a cache outside
# the clone (cold: about 20 minutes on 2 cores; warm: nothing to do).
if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go 1.24 or newer is needed to build the Kubernetes components (none found)" >&2
  exit 1
fi
components=$("$(dirname "$0")/../components/build.sh")
echo "setup: Kubernetes components in $components" >&2
# The CSI conformance suite the volume driver is tested with.
csi_sanity=$("$(dirname "$0")/../components/csi-sanity.sh")
echo "setup: csi-sanity at $csi_sanity" >&2
