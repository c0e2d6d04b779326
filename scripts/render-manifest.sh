#!/usr/bin/env bash
# Renders deploy/headcni.yaml from the Helm chart deploy/chart/headcni with its default values
# (release "headcni", namespace kube-system), with the real Helm engine (helm-python-sdk, in the
# virtualenv of scripts/lib/chart-venv.sh). The chart is the one source of truth: edit it, run
# this, commit both. scripts/check-chart.sh fails when the checked-in file differs.
#
# Usage: scripts/render-manifest.sh [OUT]   (default: deploy/headcni.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/chart-venv.sh
source scripts/lib/chart-venv.sh
chart_venv_setup
out="${1:-deploy/headcni.yaml}"
"$CHART_PY" scripts/lib/chart.py manifest "$out"
echo "rendered $out from deploy/chart/headcni" >&2
