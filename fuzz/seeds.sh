#!/usr/bin/env bash
# Prints the seed files of a fuzz target, taken from the real evidence in testvectors/.
set -euo pipefail
v="$(cd "$(dirname "$0")/../testvectors" && pwd)"
case "$1" in
  snp_report) ls "$v"/snp/*/report*.bin "$v"/snp/azure-vtpm-genoa/snp-report.bin ;;
  snp_cert_table) ls "$(dirname "$0")"/seeds/snp_cert_table/* ;;
  x509) ls "$v"/snp/*/*.der "$v"/snp/*/*.pem "$v"/roots/*/*.pem "$v"/tdx/gotdxguest-v4-spr-e4/*.der ;;
  dcap_quote) ls "$v"/tdx/*/quote.bin "$v"/tdx/azure-tdx-vtpm/td-quote.bin "$v"/sgx/*/quote.bin ;;
  dcap_collateral) ls "$v"/tdx/*/collateral.json "$v"/sgx/*/collateral.json "$v"/tdx/gotdxguest-v4-spr-e4/*.json ;;
  tpm_structures) ls "$v"/tpm/azure-vtpm-quote/quote.msg "$v"/snp/azure-vtpm-milan/tpm-quote.msg ;;
  tpm_eventlog) ls "$(dirname "$0")"/seeds/tpm_eventlog/* ;;
  tpm_pcr_text) ls "$v"/tpm/azure-vtpm-quote/pcrs_sha256.txt ;;
  azure_hcl) ls "$v"/snp/*/hcl-report.bin "$v"/tdx/azure-tdx-vtpm/hcl-report.bin ;;
  azure_evidence) ls "$v"/snp/azure-vtpm-*/evidence*.json "$v"/tdx/azure-tdx-vtpm/evidence*.json ;;
  reference_values) ls "$(dirname "$0")"/seeds/reference_values/* ;;
  mesh_datagram) ls "$(dirname "$0")"/seeds/mesh_datagram/* ;;
  atls_evidence_extension) ls "$(dirname "$0")"/seeds/atls_evidence_extension/* ;;
  cluster_wire) ls "$(dirname "$0")"/seeds/cluster_wire/* "$v"/snp/milan-trustee-vcek/vcek.der ;;
  kms_unwrap) ls "$(dirname "$0")"/seeds/kms_unwrap/* ;;
  volume_structures) ls "$(dirname "$0")"/seeds/volume_structures/* ;;
  s3_object) ls "$(dirname "$0")"/../crates/storage/s3-proxy/fuzz-seeds/* ;;
  csi_registration) ls "$(dirname "$0")"/seeds/csi_registration/* ;;
  tlog_structures) ls "$(dirname "$0")"/seeds/tlog_structures/* ;;
  cas_session) ls "$(dirname "$0")"/seeds/cas_session/* ;;
  cas_requests) ls "$(dirname "$0")"/seeds/cas_requests/* ;;
  kbs_requests) ls "$(dirname "$0")"/seeds/kbs_requests/* ;;
  *) ;;
esac
