#!/usr/bin/env bash
# HeadCNI vs the Debian reference bridge + host-local, on the same workloads, in ONE run of the
# shared cni-bench harness (../shared/tools/cni-bench): real netns, a fresh exec per call,
# latency / CPU / peak RSS per operation. Cells are interleaved so machine noise spreads over
# both plugins. Results: $OUT/results.jsonl and $OUT/summary.md (median over repetitions).
#
#   bench/run.sh                         # N=250,1000  C=1,8  REPS=3, plus IPAM alone (N=1000)
#   NS="250" CS="1 8" REPS=2 bench/run.sh
#
# Needs root, python3, cc, iproute2, containernetworking-plugins (installed if missing).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/tools/cni-bench}"
OUT="${OUT:-/tmp/headcni-bench/$(date +%Y%m%d-%H%M%S)}"
NS="${NS:-250 1000}"; CS="${CS:-1 8}"; REPS="${REPS:-3}"; IPAM_N="${IPAM_N:-1000}"

[[ $EUID -eq 0 ]] || { echo "bench/run.sh: run as root" >&2; exit 1; }
[[ -x "$HARNESS/run.sh" ]] || { echo "bench/run.sh: cni-bench not found at $HARNESS" >&2; exit 1; }
if [[ ! -x /usr/lib/cni/bridge ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containernetworking-plugins
fi

built="$("$ROOT/scripts/build-release.sh")"   # the static release binary, as deployed
BIN="$OUT/bin"
mkdir -p "$BIN"
install -m 0755 "$built" "$BIN/headcni"
ln -sf headcni "$BIN/headcni-ipam"
RES="$OUT/results.jsonl"
: >"$RES"
echo "results in $OUT" >&2

cell() { # label, then run.sh args
    local label="$1"; shift
    echo "== $label" >&2
    "$HARNESS/run.sh" "$@" --clean-ipam --label "$label" --out "$OUT/$(echo "$label" | tr ' /=' '___').json" \
        2>>"$OUT/log.txt" | sed -n 's/^RESULT //p' >>"$RES"
}

REF24="$HARNESS/configs/bridge-hostlocal-24.conflist"
REF16="$HARNESS/configs/bridge-hostlocal-16.conflist"
HC24="$HERE/configs/headcni-24.conflist"
HC16="$HERE/configs/headcni-16.conflist"
for rep in $(seq 1 "$REPS"); do
    for n in $NS; do
        # /24 holds 250 pods; 1000 pods need the /16 configs
        if ((n <= 250)); then ref=$REF24; hc=$HC24; net=24; else ref=$REF16; hc=$HC16; net=16; fi
        for c in $CS; do
            cell "ref bridge+host-local /$net N=$n C=$c" -p /usr/lib/cni/bridge -c "$ref" -n "$n" -j "$c" --cni-path /usr/lib/cni
            cell "headcni /$net N=$n C=$c" -p "$BIN/headcni" -c "$hc" -n "$n" -j "$c" --cni-path "$BIN:/usr/lib/cni"
        done
    done
    cell "ipam ref host-local /16 N=$IPAM_N C=1" --mode ipam -p /usr/lib/cni/host-local -c "$HARNESS/configs/hostlocal-ipam-16.conf" -n "$IPAM_N"
    cell "ipam headcni-ipam /16 N=$IPAM_N C=1" --mode ipam -p "$BIN/headcni-ipam" -c "$HERE/configs/headcni-ipam-16.conf" -n "$IPAM_N"
done
python3 "$HARNESS/summarize.py" "$RES" | tee "$OUT/summary.md"
