#!/usr/bin/env bash
# Runs the upstream Kubernetes conformance tests (e2e.test v1.34.4, [Conformance]) against a local
# Veil cluster (`veil mini up --nodes 3`: one control plane, two workers) and prints what passed and
# failed. Not part of the test suite (a full run takes hours on 2 cores); see components/README.md.
#
#   scripts/conformance.sh [FOCUS] [PROCS]
#
# FOCUS is a ginkgo regular expression (default '\[Conformance\]'); [Serial] and [Disruptive] tests
# run after the parallel ones, one at a time. The JUnit reports and logs go to
# $VEIL_CONFORMANCE_OUT (default ./conformance-results); VEIL_MINI_UP_ARGS adds flags to `veil mini up`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
focus=${1:-'\[Conformance\]'}
procs=${2:-3}
out=$(realpath -m "${VEIL_CONFORMANCE_OUT:-conformance-results}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/veil-ci/target}
export VEIL_COMPONENTS=${VEIL_COMPONENTS:-$("$root/components/build.sh")}
conf=$("$root/components/conformance/build.sh")
# Tools the suite's images carry (see crates/local/mini/src/images.rs, HOST_TOOLS).
for p in netcat-openbsd bind9-dnsutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p"
done
(cd "$root" && cargo build --workspace --bins)

# The cluster runs copies, so a rebuild meanwhile changes nothing under it.
rm -rf "$out" && mkdir -p "$out/bin"
cp "$CARGO_TARGET_DIR"/debug/{veil,veil-mini,veil-agent} "$out/bin/"
veil=$out/bin/veil
ws=$out/cluster
# shellcheck disable=SC2086 # extra `veil mini up` flags, word-split on purpose
"$veil" mini up --nodes 3 ${VEIL_MINI_UP_ARGS:-} --workspace "$ws"
trap '"$veil" mini down --workspace "$ws" >/dev/null 2>&1 || true' EXIT
"$veil" mini image conformance --from "$conf" --workspace "$ws"

run() { # report-dir procs focus skip
  mkdir -p "$out/$1"
  "$conf/ginkgo" run --procs="$2" --no-color --timeout=6h --output-dir="$out/$1" \
    --junit-report=junit.xml --focus="$3" --skip="$4" "$conf/e2e.test" -- \
    --kubeconfig="$ws/kubeconfig" --kubectl-path="$VEIL_COMPONENTS/kubectl" \
    --provider=skeleton --disable-log-dump --report-dir="$out/$1" \
    >"$out/$1/log" 2>&1 || true
}
run parallel "$procs" "$focus" '\[Serial\]|\[Disruptive\]'
run serial 1 "$focus.*(\[Serial\]|\[Disruptive\])|(\[Serial\]|\[Disruptive\]).*$focus" '^$'

for part in parallel serial; do
  f=$out/$part/junit.xml
  [ -e "$f" ] || { echo "$part: no report (see $out/$part/log)"; continue; }
  python3 - "$f" "$part" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
passed, failed, skipped = [], [], 0
for c in cases:
    if c.find("skipped") is not None:
        skipped += 1
    elif c.find("failure") is not None or c.find("error") is not None:
        failed.append(c.get("name"))
    else:
        passed.append(c.get("name"))
# Specs only (not the suite's set-up and tear-down nodes).
ran = [n for n in passed if n.startswith("[It]")]
failed_specs = [n for n in failed if n.startswith("[It]")]
print(f"{sys.argv[2]}: {len(ran)} specs passed, {len(failed_specs)} failed, {skipped} not run; other failures: {len(failed) - len(failed_specs)}")
for n in failed:
    print("  FAILED", n)
PY
done
