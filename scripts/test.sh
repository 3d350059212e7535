#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test, and a short fuzz run of every target.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Kubernetes components setup built (a second run of build.sh only prints where they are).
VEIL_COMPONENTS=$(components/build.sh)
export VEIL_COMPONENTS
VEIL_CSI_SANITY=$(components/csi-sanity.sh)
export VEIL_CSI_SANITY
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The owner's workstation binary links no TPM library and no WireGuard (local clusters are
# veil-mini's, nodes the agent's).
if cargo tree -p veil-cli -e normal --locked | grep -E "tss-esapi|boringtun"; then
  echo "test: veil-cli depends on tss-esapi or boringtun" >&2
  exit 1
fi
# The binaries first: tests of one crate run the binaries of others (veil, veil-mini, veil-agent).
cargo build --workspace --bins --locked
cargo test --workspace --locked
scripts/fuzz-smoke.sh "${VEIL_FUZZ_SECONDS:-15}"
