#!/usr/bin/env bash
# Cost per node as the cluster grows (issue 13; docs/performance.md, "Scale"). Run by hand as
# root on release binaries; about 2-4 minutes per size. For each N in $SIZES:
#   1. `headcni lab up --nodes N --pods 1 --reconcile-secs $RECONCILE_SECS` (30: the daemon's
#      default), $SETTLE_SECS to settle, then $IDLE_SECS idle:
#      Headscale REST requests of the daemons (the Headscale stand-in's counters,
#      GET /lab/debug/requests; the lab's own requests carry user-agent headcni-lab and are
#      kept apart), node-1's LocalAPI requests (its tailscaled stand-in's counters), daemon
#      CPU (utime+stime from /proc/<pid>/stat, all daemons), RSS per node (VmRSS of each
#      node's daemon, tailscaled stand-in and wireguard-go), node-1's table 52 routes and
#      WireGuard peers;
#   2. `lab remove-node N`, then $REPS joins of a fresh node (node-N+1, N+2, ...: an index
#      never used before) into the N-1 others
#      (headcni-lab/examples/bench.rs `converge`: daemon start -> the new pod answers a pod on
#      every other node; removal -> its route gone from every peer's table 52), with the
#      Headscale requests counted over the joins;
#   3. `lab down`.
# Results: $OUT/summary.md (one row per N) and RESULT lines in $OUT/results.txt. Targets
# (issue 13): convergence <= 1 s median at 32 nodes; idle Headscale requests <= 1 per node per
# 5 minutes; idle daemon CPU <= 1 s per hour; daemon RSS <= 15 MiB at 32 nodes.
#
#   cargo build --release --workspace && cargo build --release -p headcni-lab --example bench
#   bench/scale.sh
#   SIZES="2 8" IDLE_SECS=30 REPS=3 bench/scale.sh
#
# Nothing outlives the script: the lab is brought down in an EXIT trap, also on failure.
# The machine is shared: `uptime` is recorded with every size (load average next to each row).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
NAME="${NAME:-scale}"
SIZES="${SIZES:-2 8 16 32}"
REPS="${REPS:-5}"
SETTLE_SECS="${SETTLE_SECS:-10}"
IDLE_SECS="${IDLE_SECS:-60}"
RECONCILE_SECS="${RECONCILE_SECS:-30}"   # the daemon's default (the lab's own default is 2 s)
POLL_MS="${POLL_MS:-50}"      # the converge watcher's poll of approval and every peer's table 52
OUT="${OUT:-/tmp/headcni-scale-bench/$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
HEADCNI="$BIN/headcni"
BENCH="$BIN/examples/bench"
HS="http://192.168.77.254:8080"

[[ $EUID -eq 0 ]] || { echo "bench/scale.sh: run as root" >&2; exit 1; }
for t in jq curl awk; do
    command -v "$t" >/dev/null || { echo "bench/scale.sh: $t is missing" >&2; exit 1; }
done
for b in "$HEADCNI" "$BIN/headcni-lab" "$BENCH"; do
    [[ -x "$b" ]] || { echo "bench/scale.sh: $b missing: cargo build --release --workspace && cargo build --release -p headcni-lab --example bench" >&2; exit 1; }
done
mkdir -p "$OUT"
RES="$OUT/results.txt"
: >"$RES"
log() { echo "== $*" >&2; }
res() { echo "RESULT $1 $2" | tee -a "$RES" >&2; }
HZ="$(getconf CLK_TCK)"

LAB_UP=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((LAB_UP)); then "$HEADCNI" lab down --name "$NAME" >&2 || rc=1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lab() { "$HEADCNI" lab exec --name "$NAME" "$@"; }
state() { cat "/run/headcni-lab/$NAME/state.json"; }
# The Headscale stand-in's counters; the daemons' REST requests (everything but /lab/...).
hs_counts() { lab hub -- curl -sf --max-time 5 "$HS/lab/debug/requests"; }
hs_rest() { jq '[.routes | to_entries[] | select(.key | test(" /lab/") | not) | .value] | add // 0'; }
hs_coord() { jq '[.routes | to_entries[] | select(.key | test(" /lab/coord/")) | .value] | add // 0'; }
# Node N's tailscaled stand-in's counters (LocalAPI requests, all from its daemon).
ts_counts() {
    lab "node-$1" -- curl -sf --max-time 5 --unix-socket /run/tailscale/tailscaled.sock \
        http://local-tailscaled.sock/lab/debug/requests
}
ts_total() { jq '[.routes[]] | add // 0'; }
daemon_pids() { state | jq -r '.nodes[] | .daemon_pid // empty'; }
ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$s"; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# Per node: the RSS of every process in its network namespace (daemon, tailscaled, wireguard-go).
node_rss_kib() {
    local ino p s=0
    ino="$(stat -L -c %i "/run/netns/$NAME-node-$1")"
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/ns/net" 2>/dev/null)" == "net:[$ino]" ]] || continue
        s=$((s + $(rss_kib "${p#/proc/}")))
    done
    echo "$s"
}
median() { sort -n | awk '{a[NR]=$1} END{ if (NR==0) print 0; else print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
calc() { awk "BEGIN{printf \"$1\", $2}"; }

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "kernel: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "sizes: $SIZES; idle window ${IDLE_SECS}s after ${SETTLE_SECS}s; $REPS joins; daemons reconcile every ${RECONCILE_SECS}s"
} | tee "$OUT/machine.txt" >&2

SUMMARY="$OUT/summary.md"
{
    echo "| N | lab up s | join → reachable everywhere, median / max ms | removal → route gone, median / max ms | Headscale req/node/min idle | Headscale req per join | LocalAPI req/min (node-1) | daemon CPU s/h idle (mean) | daemon RSS MiB (median) | node RSS MiB (median) | table 52 / WG peers (node-1) | load avg |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} >"$SUMMARY"

for N in $SIZES; do
    log "N=$N: lab up --nodes $N --pods 1 ($(uptime | sed 's/.*load average: //'))"
    "$HEADCNI" lab down --name "$NAME" >/dev/null 2>&1 || true
    LAB_UP=1
    t0=$(date +%s.%N)
    "$HEADCNI" lab up --name "$NAME" --nodes "$N" --pods 1 --reconcile-secs "$RECONCILE_SECS" >"$OUT/up-$N.txt" 2>"$OUT/up-$N.log"
    up_s="$(calc %.1f "$(date +%s.%N) - $t0")"
    res "n$N.lab_up_s" "$up_s"
    sleep "$SETTLE_SECS"

    # --- idle window -------------------------------------------------------------------------
    mapfile -t DP < <(daemon_pids)
    h0="$(hs_counts)"; l0="$(ts_counts 1)"; c0="$(ticks "${DP[@]}")"; w0=$(date +%s.%N)
    sleep "$IDLE_SECS"
    h1="$(hs_counts)"; l1="$(ts_counts 1)"; c1="$(ticks "${DP[@]}")"; w1=$(date +%s.%N)
    win="$(calc %.3f "$w1 - $w0")"
    rest=$(( $(hs_rest <<<"$h1") - $(hs_rest <<<"$h0") ))
    coord=$(( $(hs_coord <<<"$h1") - $(hs_coord <<<"$h0") ))
    lapi=$(( $(ts_total <<<"$l1") - $(ts_total <<<"$l0") ))
    hs_idle="$(calc %.2f "$rest / $N / ($win / 60)")"
    lapi_min="$(calc %.1f "$lapi / ($win / 60)")"
    cpu_h="$(calc %.2f "($c1 - $c0) / $HZ / ${#DP[@]} * 3600 / $win")"
    res "n$N.idle.headscale_rest_per_node_per_min" "$hs_idle"
    res "n$N.idle.headscale_rest_total" "$rest"
    res "n$N.idle.coord_requests_per_node_per_min" "$(calc %.1f "$coord / $N / ($win / 60)")"
    res "n$N.idle.localapi_per_min_node1" "$lapi_min"
    res "n$N.idle.daemon_cpu_s_per_hour_mean" "$cpu_h"
    jq -c '.routes' <<<"$h1" >"$OUT/headscale-routes-$N.json"
    jq -c '.routes' <<<"$l1" >"$OUT/localapi-routes-$N.json"
    drss="$(for p in "${DP[@]}"; do rss_kib "$p"; done | median)"
    nrss="$(for n in $(state | jq -r '.nodes | keys[]'); do node_rss_kib "$n"; done | median)"
    res "n$N.idle.daemon_rss_mib_median" "$(calc %.1f "$drss / 1024")"
    res "n$N.idle.node_rss_mib_median" "$(calc %.1f "$nrss / 1024")"
    t52="$(lab node-1 -- ip route show table 52 | wc -l)"
    wgp="$(lab node-1 -- wg show tailscale0 peers | wc -l)"
    res "n$N.table52_routes_node1" "$t52"
    res "n$N.wg_peers_node1" "$wgp"

    # --- joins -------------------------------------------------------------------------------
    "$HEADCNI" lab remove-node --name "$NAME" "$N" >&2
    j0="$(hs_counts)"; jt0=$(date +%s.%N)
    "$BENCH" converge --name "$NAME" --reps "$REPS" --first-node "$((N + 1))" --poll-ms "$POLL_MS" >"$OUT/converge-$N.txt" 2>"$OUT/converge-$N.log"
    j1="$(hs_counts)"; jt1=$(date +%s.%N)
    sed "s/^RESULT /RESULT n$N./" "$OUT/converge-$N.txt" | tee -a "$RES" >&2
    jrest=$(( $(hs_rest <<<"$j1") - $(hs_rest <<<"$j0") ))
    res "n$N.join.headscale_rest_per_join" "$(calc %.1f "$jrest / $REPS")"
    res "n$N.join.headscale_rest_per_node_per_min" "$(calc %.2f "$jrest / $N / (($jt1 - $jt0) / 60)")"
    get() { sed -n "s/^RESULT n$N\.$1 //p" "$RES" | tail -1; }
    load="$(uptime | sed 's/.*load average: //')"
    res "n$N.loadavg" "\"$load\""
    echo "| $N | $up_s | $(get daemon_to_reach_ms.median) / $(get daemon_to_reach_ms.max) | $(get remove_to_withdrawn_ms.median) / $(get remove_to_withdrawn_ms.max) | $hs_idle | $(get join.headscale_rest_per_join) | $lapi_min | $cpu_h | $(get idle.daemon_rss_mib_median) | $(get idle.node_rss_mib_median) | $t52 / $wgp | $load |" >>"$SUMMARY"

    "$HEADCNI" lab down --name "$NAME" >&2
    LAB_UP=0
done

log "summary ($SUMMARY)"
cat "$SUMMARY"
