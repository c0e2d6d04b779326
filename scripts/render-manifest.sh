#!/usr/bin/env bash
# Renders the checked-in manifests from the Helm chart deploy/chart/headcni (release "headcni",
# namespace kube-system), with the real Helm engine (helm-python-sdk, in the virtualenv of
# scripts/lib/chart-venv.sh):
#   deploy/headcni.yaml              the default values (host mode);
#   deploy/headcni-daemon-mode.yaml  mode=daemon, daemonMode.tailscaledHostPath=/usr/local/sbin/tailscaled
#                                    (what headcni-lab's image mode runs in daemon mode).
# The chart is the one source of truth: edit it, run this, commit all three.
# scripts/check-chart.sh fails when a checked-in file differs.
#
# Usage: scripts/render-manifest.sh [OUT [DAEMON_OUT]]
#   (default: deploy/headcni.yaml and deploy/headcni-daemon-mode.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/chart-venv.sh
source scripts/lib/chart-venv.sh
chart_venv_setup
out="${1:-deploy/headcni.yaml}"
daemon_out="${2:-deploy/headcni-daemon-mode.yaml}"
"$CHART_PY" scripts/lib/chart.py manifest "$out"
echo "rendered $out from deploy/chart/headcni" >&2
"$CHART_PY" scripts/lib/chart.py manifest-daemon "$daemon_out"
echo "rendered $daemon_out from deploy/chart/headcni (daemon mode)" >&2
