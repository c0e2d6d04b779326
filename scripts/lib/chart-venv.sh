# Sourced by scripts/check-chart.sh and scripts/render-manifest.sh: makes (once) and checks the
# Python virtualenv with the real Helm engine (helm-python-sdk: Helm v4's Go SDK as a shared
# library, no helm binary) and kubernetes-validate (the Kubernetes API schemas, bundled in its
# wheel), every package pinned. Sets CHART_VENV and CHART_PY.
#
# The venv lives in ${CARGO_TARGET_DIR:-target}/chart-venv (a fresh clone makes it; pip reaches
# PyPI once). If pip cannot install the pinned packages this fails loudly: nothing is skipped.

# Every package pinned; pip installs them with --no-deps, so nothing unpinned sneaks in.
CHART_REQUIREMENTS="helm-python-sdk==0.2.2
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0"

chart_venv_die() {
    echo "chart-venv: $*" >&2
    exit 1
}

chart_venv_python() {
    local py
    for py in "${PYTHON:-python3}" /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return
        fi
    done
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "== installing python3 python3-venv (Debian)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        echo /usr/bin/python3
        return
    fi
    chart_venv_die "no python3 >= 3.11 found (tomllib is needed)"
}

chart_venv_setup() {
    local target="${CARGO_TARGET_DIR:-target}"
    mkdir -p "$target"
    CHART_VENV="$(cd "$target" && pwd)/chart-venv"
    CHART_PY="$CHART_VENV/bin/python"
    local want
    want="$(printf '%s\n' "$CHART_REQUIREMENTS")"
    # Concurrent runs share the venv: install under a lock.
    exec 8>"$CHART_VENV.lock"
    flock 8
    if [[ ! -x "$CHART_PY" ]] || [[ "$(cat "$CHART_VENV/requirements.txt" 2>/dev/null)" != "$want" ]] ||
        ! "$CHART_PY" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
        echo "== installing helm-python-sdk and kubernetes-validate into $CHART_VENV" >&2
        rm -rf "$CHART_VENV"
        local py
        py="$(chart_venv_python)"
        if ! "$py" -m venv "$CHART_VENV" 2>/dev/null; then
            # Debian's python3 ships venv separately.
            [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null ||
                chart_venv_die "'$py -m venv' failed (install python3-venv)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            rm -rf "$CHART_VENV"
            "$py" -m venv "$CHART_VENV" || chart_venv_die "'$py -m venv' failed"
        fi
        if ! "$CHART_PY" -m pip install --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: $(printf '%s\n' "$CHART_REQUIREMENTS"); then
            rm -rf "$CHART_VENV"
            chart_venv_die "pip could not install the pinned packages from PyPI (network?): the chart is NOT verified"
        fi
        "$CHART_PY" -m pip check --disable-pip-version-check >/dev/null ||
            chart_venv_die "the pinned packages do not fit together (pip check)"
        printf '%s\n' "$want" >"$CHART_VENV/requirements.txt"
    fi
    flock -u 8
}
