#!/usr/bin/env bash
# Verifies the Helm chart deploy/chart/headcni with the real Helm engine, offline after the
# one-time install (helm-python-sdk embeds Helm v4's Go SDK; no helm binary):
#   1. Chart.yaml's appVersion is the workspace version;
#   2. `helm lint --strict` (default values, and every value set) finds no warning or error;
#   3. values.schema.json refuses bad values (a self-check: wrong enums, types, patterns,
#      unknown and per-node keys);
#   4. renders the chart for the default values, each mode x approval (host/daemon x
#      api/auto-approvers/tailscale-api) and every value set, and checks each config.toml
#      against its values; every key of docs/configuration.md must be a chart value;
#   5. validates every rendering with kubernetes-validate in strict mode (Kubernetes 1.33 and
#      1.37 schemas) plus HeadCNI's deployment rules (scripts/validate-deploy.sh);
#   6. deploy/headcni.yaml equals the default rendering, deploy/headcni-daemon-mode.yaml the
#      daemon-mode one (scripts/render-manifest.sh).
# The virtualenv is ${CARGO_TARGET_DIR:-target}/chart-venv, pinned (scripts/lib/chart-venv.sh);
# if pip cannot reach PyPI this fails, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/chart-venv.sh
source scripts/lib/chart-venv.sh
chart_venv_setup

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== helm lint, values schema, render every mode (Helm $("$CHART_PY" -c 'import helm_python as h; print(h.helm_sdk_version())'))" >&2
"$CHART_PY" scripts/lib/chart.py check "$out"

echo "== kubernetes-validate (strict) and deployment rules on every rendering" >&2
HEADCNI_VALIDATE_VENV="$CHART_VENV" bash scripts/validate-deploy.sh "$out"/*.yaml

echo "== deploy/headcni.yaml and deploy/headcni-daemon-mode.yaml are the chart's renderings" >&2
"$CHART_PY" scripts/lib/chart.py manifest "$out/headcni.yaml"
"$CHART_PY" scripts/lib/chart.py manifest-daemon "$out/headcni-daemon-mode.yaml"
for f in headcni.yaml headcni-daemon-mode.yaml; do
    if ! diff -u "deploy/$f" "$out/$f"; then
        echo "check-chart: deploy/$f differs from the chart's rendering: run scripts/render-manifest.sh" >&2
        exit 1
    fi
done
echo "chart ok: lint, schema, $(find "$out" -name '*.yaml' ! -name headcni.yaml ! -name headcni-daemon-mode.yaml | wc -l) renderings valid, deploy/headcni.yaml and deploy/headcni-daemon-mode.yaml up to date"
