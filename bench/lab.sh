#!/usr/bin/env bash
# Multi-node lab benchmarks (docs/performance.md, "Multi-node lab (issue 4)"). Run by hand as
# root; takes a few minutes. Brings up its own lab (`headcni lab up --name $NAME`) and measures:
#   1. route convergence when a node joins (headcni-lab/examples/bench.rs `converge`):
#      daemon start -> the new node's pod answers pods on every other node; route approval ->
#      every peer's table 52 has it; removal -> withdrawn everywhere
#   2. the node daemon's VmRSS/VmHWM idle and during a burst of pod ADD/DEL (`rss`)
#   3. iperf3 TCP throughput (median of $IPERF_RUNS runs of $IPERF_SECS s):
#      a. pod<->pod on one node through HeadCNI vs a raw veth+bridge baseline (same MTU)
#      b. pod<->pod across nodes vs node<->node over the same WireGuard tunnel
# and prints a table ($OUT/summary.md; raw RESULT lines and iperf3 JSON in $OUT).
#
#   bench/lab.sh
#   NAME=bench REPS=5 IPERF_RUNS=3 IPERF_SECS=5 BURST=50 bench/lab.sh
#   ONLY=baseline bench/lab.sh      # only the raw veth+bridge iperf3 baseline (no lab)
#
# Nothing outlives the script: the lab is brought down, the baseline namespaces deleted and
# iperf3 servers killed in an EXIT trap, also on failure. The host's own network is not
# touched (the baseline bridge lives in a namespace of its own).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
NAME="${NAME:-bench}"
REPS="${REPS:-5}"
IPERF_RUNS="${IPERF_RUNS:-3}"
IPERF_SECS="${IPERF_SECS:-5}"
BURST="${BURST:-50}"
IDLE_SECS="${IDLE_SECS:-10}"
MTU="${MTU:-1280}"          # what the lab's pods and tailscale0 get
OUT="${OUT:-/tmp/headcni-lab-bench/$(date +%Y%m%d-%H%M%S)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
HEADCNI="$BIN/headcni"
BASE="hcb$$"                # baseline namespaces: $BASE-br (bridge), $BASE-a, $BASE-b

[[ $EUID -eq 0 ]] || { echo "bench/lab.sh: run as root" >&2; exit 1; }
for t in iperf3 jq ip wireguard-go; do
    command -v "$t" >/dev/null || { echo "bench/lab.sh: $t is missing" >&2; exit 1; }
done
mkdir -p "$OUT"
RES="$OUT/results.txt"
: >"$RES"
log() { echo "== $*" >&2; }

BG_PIDS=()
LAB_UP=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in "$BASE-a" "$BASE-b" "$BASE-br"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if ((LAB_UP)); then
        "$HEADCNI" lab down --name "$NAME" >&2 || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

res() { echo "RESULT $1 $2" | tee -a "$RES" >&2; }
get() { sed -n "s/^RESULT $1 //p" "$RES" | tail -1; }


# CPU accounting: busy jiffies of all CPUs (/proc/stat), and utime+stime of given pids.
cpu_total() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
pid_ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$s"; }
# wireguard-go processes of the lab's nodes (matched by network namespace, not by name only,
# so other labs on the machine are not counted).
wg_pids() {
    local p n ino
    for p in $(pgrep -x wireguard-go || true); do
        for n in /run/netns/"$NAME"-node-*; do
            [[ -e "$n" ]] || continue
            ino="$(stat -L -c %i "$n" 2>/dev/null || true)"
            [[ "$(readlink "/proc/$p/ns/net")" == "net:[$ino]" ]] && echo "$p"
        done
    done
}
HZ="$(getconf CLK_TCK)"

# One iperf3 run: $1 label, $2 server address, $3 run number; SRV/CLI arrays: command
# prefixes entering the server's and the client's namespace. Records Mbit/s, retransmits,
# machine CPU busy (% of all cores) and wireguard-go CPU (% of one core) as a RESULT line.
SRV=(); CLI=()
iperf_run() {
    local label="$1" addr="$2" i="$3" j sp ok wg c0 c1 w0 w1 busy wgcpu json
    json="$OUT/iperf-$label-$i.json"
    "${SRV[@]}" timeout $((IPERF_SECS + 60)) iperf3 -s -1 -B "$addr" -p 5201 >/dev/null 2>&1 &
    sp=$!
    BG_PIDS+=("$sp")
    read -r -a wg <<<"$(wg_pids | tr '\n' ' ')"
    ok=0
    for j in $(seq 1 50); do
        c0="$(cpu_total)"
        w0="$(pid_ticks "${wg[@]}")"
        if "${CLI[@]}" iperf3 -c "$addr" -p 5201 -t "$IPERF_SECS" -J >"$json" 2>/dev/null; then
            ok=1; break
        fi
        sleep 0.2   # the server is not listening yet
    done
    ((ok)) || { echo "iperf3 $label run $i failed: $(cat "$json")" >&2; return 1; }
    c1="$(cpu_total)"
    w1="$(pid_ticks "${wg[@]}")"
    wait "$sp" || true
    local mbps retr hcpu rcpu
    mbps="$(jq '.end.sum_received.bits_per_second / 1e6 | round' "$json")"
    retr="$(jq '.end.sum_sent.retransmits // 0' "$json")"
    hcpu="$(jq '.end.cpu_utilization_percent.host_total | round' "$json")"
    rcpu="$(jq '.end.cpu_utilization_percent.remote_total | round' "$json")"
    busy="$(awk -v a="$c0" -v b="$c1" -v s="$IPERF_SECS" -v hz="$HZ" -v n="$(nproc)" 'BEGIN{printf "%.0f", (b-a)/hz/s/n*100}')"
    wgcpu="$(awk -v a="$w0" -v b="$w1" -v s="$IPERF_SECS" -v hz="$HZ" 'BEGIN{printf "%.0f", (b-a)/hz/s*100}')"
    echo "$label run $i: $mbps Mbit/s, $retr retransmits, iperf3 CPU client $hcpu% server $rcpu%, machine busy $busy%, wireguard-go $wgcpu% of a core" >&2
    echo "RESULT iperf.$label.run$i.mbps $mbps retr=$retr machine_busy_pct=$busy wg_pct_core=$wgcpu" >>"$RES"
}
# Median Mbit/s of a label's runs.
iperf_median() {
    sed -n "s/^RESULT iperf\.$1\.run[0-9]*\.mbps \([0-9]*\).*/\1/p" "$RES" | sort -n |
        awk '{a[NR]=$1} END{ if (NR==0) print ""; else print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'
}
set_raw() { SRV=(ip netns exec "$BASE-b"); CLI=(ip netns exec "$BASE-a"); }

{
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)"
    echo "kernel: $(uname -r), $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "wireguard-go: $(wireguard-go --version 2>/dev/null | head -1), iperf3: $(iperf3 --version | head -1)"
    echo "CPU pressure at start: $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)"
} | tee "$OUT/machine.txt" >&2

# --- 3a baseline: raw veth + bridge (no lab needed; kept until the end, runs interleaved) -----
log "baseline: $BASE-a <-> bridge in $BASE-br <-> $BASE-b, MTU $MTU"
ip netns add "$BASE-br"
ip netns add "$BASE-a"
ip netns add "$BASE-b"
ip -n "$BASE-br" link add br0 mtu "$MTU" type bridge
ip -n "$BASE-br" link set br0 up
ip -n "$BASE-br" link set lo up
for x in a b; do
    ip -n "$BASE-br" link add "v$x" mtu "$MTU" type veth peer name eth0 mtu "$MTU" netns "$BASE-$x"
    ip -n "$BASE-br" link set "v$x" master br0 up
    ip -n "$BASE-$x" link set lo up
    ip -n "$BASE-$x" link set eth0 up
done
ip -n "$BASE-a" addr add 10.255.0.1/24 dev eth0
ip -n "$BASE-b" addr add 10.255.0.2/24 dev eth0
if [[ "${ONLY:-}" == baseline ]]; then
    for i in $(seq 1 "$IPERF_RUNS"); do set_raw; iperf_run raw-bridge 10.255.0.2 "$i"; done
    res iperf.raw-bridge.median_mbps "$(iperf_median raw-bridge)"
    exit 0
fi

log "build (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release --workspace -q && cargo build --release -q -p headcni-lab --example bench)
bench_ex() { (cd "$ROOT" && cargo run --release -q -p headcni-lab --example bench -- "$@"); }

# --- the lab --------------------------------------------------------------------------------
log "lab up --name $NAME (2 nodes x 2 pods)"
LAB_UP=1
"$HEADCNI" lab down --name "$NAME" >/dev/null 2>&1 || true
"$HEADCNI" lab up --name "$NAME" --nodes 2 --pods 2 | tee "$OUT/lab-up.txt" >&2
lab() { "$HEADCNI" lab exec --name "$NAME" "$@"; }
addr_of() { lab "$1" -- ip -4 -o addr show dev "$2" | awk '{split($4,a,"/"); print a[1]; exit}'; }

# --- 2. daemon RSS (first, so "idle" is the freshly converged lab) ----------------------------
log "daemon RSS on node-1: idle ${IDLE_SECS}s, then $BURST ADD + hold + $BURST DEL"
bench_ex rss --name "$NAME" --node 1 --idle-secs "$IDLE_SECS" --burst "$BURST" | tee -a "$RES" >&2

# --- 1. convergence -----------------------------------------------------------------------------
log "route convergence: $REPS joins of a fresh node"
bench_ex converge --name "$NAME" --reps "$REPS" | tee -a "$RES" >&2

# --- 3. throughput ------------------------------------------------------------------------------
P12="$(addr_of pod-1-2 eth0)"; P21="$(addr_of pod-2-1 eth0)"
N1="$(addr_of node-1 tailscale0)"; N2="$(addr_of node-2 tailscale0)"
log "iperf3: pod-1-2 $P12, pod-2-1 $P21, node-1 $N1, node-2 $N2"
# (not /sys/class/net: a node's mount namespace has the host's sysfs)
mtu_of() { lab "$1" -- ip -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'; }
pod_mtu="$(mtu_of pod-1-1 eth0)"
ts_mtu="$(mtu_of node-1 tailscale0)"
res mtu.pod "$pod_mtu"
res mtu.tailscale0 "$ts_mtu"
[[ "$pod_mtu" == "$MTU" ]] || echo "note: the pods' MTU is $pod_mtu, the baseline used $MTU" >&2

# Interleaved run by run, so the shared machine's load spreads over all four paths alike.
for i in $(seq 1 "$IPERF_RUNS"); do
    set_raw;                              iperf_run raw-bridge 10.255.0.2 "$i"
    SRV=(lab pod-1-2 --); CLI=(lab pod-1-1 --); iperf_run pod-same-node "$P12" "$i"
    SRV=(lab node-2 --);  CLI=(lab node-1 --);  iperf_run node-tunnel "$N2" "$i"
    SRV=(lab pod-2-1 --); CLI=(lab pod-1-1 --); iperf_run pod-cross-node "$P21" "$i"
done
for l in raw-bridge pod-same-node node-tunnel pod-cross-node; do
    res "iperf.$l.median_mbps" "$(iperf_median "$l")"
done

# --- summary ------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }
raw="$(get iperf.raw-bridge.median_mbps)"; same="$(get iperf.pod-same-node.median_mbps)"
tun="$(get iperf.node-tunnel.median_mbps)"; cross="$(get iperf.pod-cross-node.median_mbps)"
kib2mib() { awk -v k="$1" 'BEGIN{ if (k=="") print "n/a"; else printf "%.1f", k/1024 }'; }
{
    echo "## lab benchmarks ($(sed -n 's/^date: //p' "$OUT/machine.txt"), $(sed -n 's/^kernel: //p' "$OUT/machine.txt"))"
    echo
    echo "| measurement | median | max | n |"
    echo "| --- | --- | --- | --- |"
    for k in daemon_to_ready_ms daemon_to_reach_ms pod_add_to_reach_ms daemon_to_approved_ms approved_to_peer_table52_ms daemon_to_peer_table52_ms remove_to_withdrawn_ms add_node_ms; do
        echo "| $k | $(get "$k.median") | $(get "$k.max") | $(get "$k.n") |"
    done
    echo
    echo "| daemon (node-1 headcni-daemon) | VmRSS MiB | VmHWM MiB | threads | CPU % of a core |"
    echo "| --- | --- | --- | --- | --- |"
    echo "| idle ${IDLE_SECS}s | $(kib2mib "$(get idle.vmrss_kib)") (max $(kib2mib "$(get idle.vmrss_max_kib)")) | $(kib2mib "$(get idle.vmhwm_kib)") | $(get idle.threads) | $(get idle.cpu_pct) |"
    echo "| $BURST ADD + hold + $BURST DEL | max $(kib2mib "$(get busy.vmrss_max_kib)"), after $(kib2mib "$(get busy.after_vmrss_kib)") | $(kib2mib "$(get busy.vmhwm_kib)") | $(get busy.threads) | $(get busy.cpu_pct) |"
    echo
    echo "| iperf3 TCP, median of $IPERF_RUNS x ${IPERF_SECS}s | Mbit/s | vs | ratio |"
    echo "| --- | --- | --- | --- |"
    echo "| raw veth+bridge, MTU $MTU | $raw | | |"
    echo "| pod-1-1 -> pod-1-2 (same node, HeadCNI) | $same | raw bridge | $(ratio "$same" "$raw") |"
    echo "| node-1 -> node-2 (tailscale0, wireguard-go) | $tun | | |"
    echo "| pod-1-1 -> pod-2-1 (across nodes, HeadCNI) | $cross | node tunnel | $(ratio "$cross" "$tun") |"
    echo
    echo "per run (Mbit/s, retransmits, machine CPU busy %, wireguard-go % of a core):"
    echo
    sed -n 's/^RESULT iperf\.\(.*\)\.run\([0-9]*\)\.mbps /- \1 #\2: /p' "$RES"
} | tee "$OUT/summary.md"
echo "results in $OUT" >&2
