#!/usr/bin/env bash
# Builds what a Kubernetes conformance run needs, at the Kubernetes version Veil runs: e2e.test (the
# upstream end-to-end suite, [Conformance] tests included), the ginkgo runner for parallel runs,
# agnhost (the upstream test workload) and the sample API server (the aggregator test's). Cached
# like the components, by a hash of its inputs; prints the directory holding the binaries. Not part
# of a node: scripts/conformance.sh uses it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VEIL_CACHE:-$HOME/.cache/veil-ci}
export GOMODCACHE=${GOMODCACHE:-$cache/go/mod} GOCACHE=${GOCACHE:-$cache/go/build}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
k8s_version=v1.34.4

key=$(cd "$here" && { cat build.sh go.mod go.sum tools.go; go version; } | sha256sum | cut -c1-16)
out=$cache/conformance/$key
if [ ! -e "$out/.complete" ]; then
  echo "conformance: building into $out (cold: about 15 minutes on 2 cores)" >&2
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp/bin"
  bin=$out.tmp/bin
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
  done
  cd "$here"
  go test -c -trimpath -ldflags "$ldflags" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e
  go build -trimpath -ldflags "-s -w" -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/agnhost" k8s.io/kubernetes/test/images/agnhost
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/sample-apiserver" k8s.io/sample-apiserver
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/nnp" k8s.io/kubernetes/test/images/nonewprivs
  # agnhost's image carries the porter's test certificate; keep it beside the binary.
  src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost
  cp "$src/porter/localhost.crt" "$src/porter/localhost.key" "$bin/"
  # The update-demo images are agnhost serving these pages.
  for demo in nautilus kitten; do
    mkdir -p "$bin/$demo" && cp "$src/../$demo/html/"* "$bin/$demo/"
  done
  touch "$out.tmp/.complete"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
echo "$out/bin"
