#!/usr/bin/env bash
# The main job, for now: set up, build `veil`, and verify real hardware evidence sets.
set -euo pipefail
cd "$(dirname "$0")/.."
VEIL_SETUP_FUZZ=0 scripts/setup.sh
cargo build --release -q -p veil-cli
veil=${CARGO_TARGET_DIR:-target}/release/veil
v=testvectors

echo "== AMD SEV-SNP, Milan, VCEK (chain to the pinned ARK-Milan)"
"$veil" attest verify snp --report $v/snp/milan-virtee/report_milan.bin \
  --cert $v/snp/milan-virtee/vcek_milan.der --as-of 2026-01-01T00:00:00Z

echo
echo "== AMD SEV-SNP, Milan, VLEK at VMPL 1 (the default policy requires VMPL 0: rejected)"
"$veil" attest verify snp --report $v/snp/milan-trustee-vlek/report.bin \
  --cert $v/snp/milan-trustee-vlek/vlek.der --as-of 2025-06-01T00:00:00Z || echo "(exit status $?)"
