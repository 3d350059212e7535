#!/usr/bin/env bash
# Builds csi-sanity (kubernetes-csi/csi-test v5.6.0: the conformance suite every CSI driver is held
# to) from the Go module proxy into the cache beside the components, and prints its path. A second
# run builds nothing.
set -euo pipefail
cache=${VEIL_CACHE:-$HOME/.cache/veil-ci}
export GOMODCACHE=${GOMODCACHE:-$cache/go/mod} GOCACHE=${GOCACHE:-$cache/go/build}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
version=v5.6.0
out=$cache/tools/csi-sanity-$version
if [ ! -x "$out/csi-sanity" ]; then
  echo "csi-sanity: building $version into $out" >&2
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  GOBIN=$out.tmp go install -trimpath "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$version"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
echo "$out/csi-sanity"
