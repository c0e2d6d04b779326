#!/usr/bin/env bash
# CNI STATUS latency of the release `headcni` (issue 11 item 6; docs/performance.md):
# 1,000 exec'd STATUS calls per case, wall time per exec (Python subprocess), in-process
# headcni-ipam on an empty /24, the bridge absent; with and without a `daemonSocket` whose
# fresh ready.json says ready. Prints p50/p99 in ms. Usage: bench/status-latency.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
cargo build --release -q -p headcni-cli --bin headcni
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/headcni"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$BIN" "$tmp" "$N" <<'PY'
import json, os, subprocess, sys, time
binary, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = os.path.join(tmp, "run"); os.makedirs(run)
now_ms = int(time.time() * 1000)
with open(os.path.join(run, "ready.json"), "w") as f:
    json.dump({"ready": True, "reasons": [], "addBlocked": [],
               "writtenAtUnixMs": now_ms, "reconcileIntervalMs": 3_600_000}, f)
base = {"cniVersion": "1.1.0", "name": "bench", "type": "headcni", "bridge": "hcstat0",
        "ipam": {"type": "headcni-ipam", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                 "dataDir": os.path.join(tmp, "ipam")}}
env = dict(os.environ, CNI_COMMAND="STATUS", CNI_PATH=os.path.dirname(binary))
for case, extra in [("no daemonSocket", {}),
                    ("with daemonSocket (ready.json read)",
                     {"daemonSocket": os.path.join(run, "daemon.sock")})]:
    conf = json.dumps(dict(base, **extra)).encode()
    t = []
    for _ in range(n):
        s = time.perf_counter()
        p = subprocess.run([binary], input=conf, env=env, capture_output=True)
        t.append((time.perf_counter() - s) * 1000)
        if p.returncode != 0:
            sys.exit(f"{case}: STATUS exited {p.returncode}: {p.stdout!r} {p.stderr!r}")
    t.sort()
    print(f"{case}: p50 {t[len(t)//2]:.2f} ms, p99 {t[int(len(t)*0.99)]:.2f} ms ({n} calls)")
PY
