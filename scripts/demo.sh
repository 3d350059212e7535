#!/usr/bin/env bash
# The main job: set up, build, bring up a local confidential cluster (`veil mini up`), verify all
# of it with one command (`veil verify`), show a recovery, take it down. Then verify real
# hardware evidence of every kind from testvectors/.
set -euo pipefail
cd "$(dirname "$0")/.."
VEIL_SETUP_FUZZ=0 scripts/setup.sh
cargo build --release --locked -q -p veil-cli -p veil-mini -p veil-agent
bin=${CARGO_TARGET_DIR:-target}/release
veil=$bin/veil
v=testvectors
challenge=6368616c6c656e6765 # "challenge"
ws=$(mktemp -d)/veil-mini

step() { printf '\n== %s\n' "$*"; }
expect_reject() { "$@" || echo "(exit status $?: rejected, as expected)"; }
cleanup() { "$veil" mini down --workspace "$ws" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "veil mini up: 1 control-plane node and 2 workers, each with its own software TPM"
"$veil" mini up --nodes 3 --workspace "$ws"

step "veil verify: whole-cluster attestation over a fresh nonce"
"$veil" verify --workspace "$ws" --save "$ws/../report.json"
"$veil" verify --workspace "$ws" --report "$ws/../report.json" >/dev/null && echo "saved report re-verified offline"

step "the control plane restarts; keys stop until the owner recovers"
"$veil" mini restart cp-0 --workspace "$ws"
expect_reject "$veil" verify --workspace "$ws"
"$veil" recover --workspace "$ws"
sleep 3
"$veil" mini status --workspace "$ws"

step "veil mini down"
"$veil" mini down --workspace "$ws"
trap - EXIT

step "AMD SEV-SNP, Milan, VCEK -> ASK -> pinned ARK-Milan"
"$veil" attest verify snp --report $v/snp/milan-virtee/report_milan.bin \
  --cert $v/snp/milan-virtee/vcek_milan.der --as-of 2026-01-01T00:00:00Z

step "AMD SEV-SNP, Milan, VLEK at VMPL 1: the default policy requires VMPL 0"
expect_reject "$veil" attest verify snp --report $v/snp/milan-trustee-vlek/report.bin \
  --cert $v/snp/milan-trustee-vlek/vlek.der --as-of 2025-06-01T00:00:00Z

step "Intel TDX quote v4 with full DCAP collateral"
"$veil" attest verify tdx --quote $v/tdx/dcapqvl-v4-uptodate/quote.bin \
  --collateral $v/tdx/dcapqvl-v4-uptodate/collateral.json --as-of 2025-07-01T00:00:00Z

step "Intel TDX quote v5 whose collateral has no TCB level for the platform"
expect_reject "$veil" attest verify tdx --quote $v/tdx/dcapqvl-v5-no-tcb-match/quote.bin \
  --collateral $v/tdx/dcapqvl-v5-no-tcb-match/collateral.json --as-of 2026-03-01T00:00:00Z

step "Intel SGX quote v3"
"$veil" attest verify sgx --quote $v/sgx/dcapqvl-v3/quote.bin \
  --collateral $v/sgx/dcapqvl-v3/collateral.json --as-of 2025-07-01T00:00:00Z

step "TPM 2.0 quote (Azure vTPM), nonce \"challenge\""
"$veil" attest verify tpm --quote $v/tpm/azure-vtpm-quote/quote.msg \
  --signature $v/tpm/azure-vtpm-quote/quote.sig --ak $v/tpm/azure-vtpm-quote/akpub.pem \
  --pcrs $v/tpm/azure-vtpm-quote/pcrs_sha256.txt --nonce $challenge

step "Azure SEV-SNP CVM: SNP report -> HCL report -> vTPM quote"
"$veil" attest verify az-snp-vtpm --evidence $v/snp/azure-vtpm-milan/evidence-v1.json \
  --nonce $challenge --as-of 2026-01-01T00:00:00Z
