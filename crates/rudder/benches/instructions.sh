#!/usr/bin/env bash
# Instructions per request of the `mesh` bench's arms under callgrind: repeatable where
# wall-clock time on a shared 2-core machine is not. Build first:
#   cargo bench -p rudder --bench mesh --no-run
# (MESH_BIN=path measures another build of the bench, e.g. an older commit's)
# then run: bash crates/rudder/benches/instructions.sh [arm ...]
# (arms: inner_alone through_mesh through_mesh_without_retries, each also with the suffix
# _one_header; inner_alone_full_body through_mesh_without_retries_full_body; needs
# valgrind).
set -euo pipefail
cd "$(dirname "$0")/../../.."
bin=${MESH_BIN:-$(ls -t target/release/deps/mesh-* | grep -v "\.d$" | head -1)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
arms=("$@")
[ ${#arms[@]} -eq 0 ] && arms=(inner_alone through_mesh through_mesh_without_retries)
for arm in "${arms[@]}"; do
  valgrind --tool=callgrind --callgrind-out-file="$out/$arm.cg" \
    "$bin" --bench --profile-time 2 "request/$arm\$" >/dev/null 2>&1
  callgrind_annotate --inclusive=yes --tree=calling "$out/$arm.cg" >"$out/$arm.txt" 2>/dev/null
  # Every iteration builds one request with `Request::get`: its call count is the number
  # of iterations, and the bencher's inclusive count covers them all.
  total=$(grep -E '^ *[0-9,]+ .*\* .*criterion::bencher::Bencher<M>::iter' "$out/$arm.txt" \
    | head -1 | awk '{gsub(",","",$1); print $1}')
  calls=$(grep -E '> .*http::request::Request<\(\)>::get' "$out/$arm.txt" | head -1 \
    | sed -E 's/.*\(([0-9,]+)x\).*/\1/' | tr -d ,)
  echo "$arm: $((total / calls)) instructions per request ($calls requests)"
done
