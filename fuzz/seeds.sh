#!/usr/bin/env bash
# Prints the seed files of a fuzz target, taken from the real evidence in testvectors/.
set -euo pipefail
v="$(dirname "$0")/../testvectors"
case "$1" in
  snp_report) ls "$v"/snp/*/report*.bin "$v"/snp/azure-vtpm-genoa/snp-report.bin ;;
  snp_cert_table) ;;
  x509) ls "$v"/snp/*/*.der "$v"/snp/*/*.pem "$v"/roots/*/*.pem "$v"/tdx/gotdxguest-v4-spr-e4/*.der ;;
  *) ;;
esac
