#!/usr/bin/env bash
# Runs every fuzz target for a few seconds from its seed corpus (stable Rust, no sanitizer).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-15}
for target in $(cargo fuzz list); do
  corpus=corpus/$target
  mkdir -p "$corpus"
  for seed in $(./seeds.sh "$target"); do cp "$seed" "$corpus/" ; done
  echo "fuzz: $target for ${seconds}s" >&2
  cargo fuzz run -s none "$target" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    > "corpus/$target.log" 2>&1 || { tail -n 40 "corpus/$target.log"; exit 1; }
  tail -n 1 "corpus/$target.log"
done
