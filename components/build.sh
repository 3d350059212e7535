#!/usr/bin/env bash
# Builds the Go-native components Veil runs (Kubernetes v1.34.4 as one multi-call binary, etcd and
# etcdctl v3.6.16, a slim CoreDNS v1.14.1, and the pause program) into a cache keyed by everything that
# decides the result, and prints the directory holding the binaries. A second run with the same inputs
# builds nothing. Go's module and build caches live beside the cargo target, outside the clone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VEIL_CACHE:-$HOME/.cache/veil-ci}
export GOMODCACHE=${GOMODCACHE:-$cache/go/mod} GOCACHE=${GOCACHE:-$cache/go/build}
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
k8s_version=v1.34.4
k8s_date=2026-02-10T12:53:36Z # the tag's time, as the module proxy gives it: builds are reproducible

key=$(cd "$here" && { cat build.sh {kube,etcd,coredns}/go.mod {kube,etcd,coredns}/go.sum kube/*.go coredns/*.go; go version; } | sha256sum | cut -c1-16)
out=$cache/components/$key
if [ ! -e "$out/.complete" ]; then
  echo "components: building into $out (cold: about 20 minutes on 2 cores)" >&2
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp/bin"
  bin=$out.tmp/bin
  source_hash=$(grep "^k8s.io/kubernetes $k8s_version h1:" "$here/kube/go.sum" | cut -d' ' -f3)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
    ldflags+=" -X $pkg.gitCommit=$source_hash -X $pkg.gitTreeState=clean -X $pkg.buildDate=$k8s_date"
  done
  (cd "$here/kube" && go build -trimpath -ldflags "$ldflags" -o "$bin/kube" .)
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    ln -s kube "$bin/$c"
  done
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 \
    && go build -trimpath -ldflags "-s -w" -o "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3)
  (cd "$here/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/coredns" .)
  # The pod sandbox's program, from the Kubernetes source at the same version.
  (cd "$here/kube" && gcc -Os -static -o "$bin/pause" \
    "$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c")
  strip "$bin/pause"
  touch "$out.tmp/.complete"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
# The container runtime comes from Debian (setup installs it); beside the components, so a node's
# measured configuration names every binary its agent starts, and containerd finds its shim.
for b in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr /usr/sbin/runc; do
  if [ -x "$b" ]; then ln -sfn "$b" "$out/bin/$(basename "$b")"; fi
done
ln -sfn "$key" "$cache/components/current"
echo "$out/bin"
