#!/usr/bin/env bash
# Validates every Kubernetes manifest under deploy/ against the Kubernetes API schemas, offline.
#
# Validator: kubernetes-validate (PyPI), which bundles the JSON schemas of each Kubernetes
# release inside its wheel (no schema is fetched at run time). It is installed, with every
# dependency pinned, into a private virtualenv (the only network use: PyPI, once); the
# validation itself then runs in a network namespace without network when `unshare --net` is
# permitted, which proves it works offline. Strict mode: unknown fields are errors, and a kind
# without a bundled schema is an error (the CLI only warns about those).
#
# On top of the schemas, HeadCNI's deployment rules are checked (the API key only as a 0400
# file, never in env or args; hostNetwork; all taints tolerated; probes on 127.0.0.1; RBAC
# limited to reading nodes; config.toml parses and uses the public keys only).
#
# Self-check: a deliberately broken copy of the manifests must be rejected, or this script fails.
#
# Usage: scripts/validate-deploy.sh [FILE...]   (default: every *.yaml/*.yml under deploy/ but
#        the chart's sources in deploy/chart/, which scripts/check-chart.sh renders and checks)
# Env:   HEADCNI_VALIDATE_VENV  where the virtualenv lives (default: ~/.cache/headcni/...;
#                               scripts/check-chart.sh passes its own, same pins)
#        PYTHON                 the interpreter (>= 3.11) that creates it (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

# 1.33 matches k8s-openapi's v1_33 feature used by the daemon; 1.37 is the newest release
# whose schemas kubernetes-validate bundles.
K8S_VERSIONS="1.33.0,1.37.0"

# Every package pinned (pip installs with --no-deps, so nothing unpinned sneaks in): the
# kubernetes-validate pins of scripts/lib/chart-venv.sh, without the Helm engine.
# shellcheck source=lib/chart-venv.sh
source scripts/lib/chart-venv.sh
REQUIREMENTS="$(printf '%s\n' "$CHART_REQUIREMENTS" | grep -v '^helm-python-sdk==')"

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    if [[ -x /usr/bin/python3 ]]; then
        PYTHON=/usr/bin/python3
    elif [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        PYTHON=/usr/bin/python3
    else
        echo "validate-deploy: no python3 (>= 3.11) found" >&2
        exit 1
    fi
fi
req_hash="$(printf '%s' "$REQUIREMENTS" | sha256sum | cut -c1-12)"
VENV="${HEADCNI_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/headcni/validate-deploy-$req_hash}"

install_validator() {
    mkdir -p "$(dirname "$VENV")"
    # Concurrent runs (parallel tests) share the virtualenv: install under a lock.
    exec 9>"$VENV.lock"
    flock 9
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
        echo "== installing kubernetes-validate into $VENV" >&2
        rm -rf "$VENV"
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 ships venv separately.
            if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
                apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
                rm -rf "$VENV"
                "$PYTHON" -m venv "$VENV"
            else
                echo "validate-deploy: '$PYTHON -m venv' failed (install python3-venv)" >&2
                exit 1
            fi
        fi
        printf '%s\n' "$REQUIREMENTS" >"$VENV/requirements.txt"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: -r "$VENV/requirements.txt"
        "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null
    fi
    flock -u 9
}

# Runs "$@" without network when the kernel lets us create a network namespace.
offline() {
    if unshare --net true 2>/dev/null; then
        unshare --net "$@"
    else
        echo "   (unshare --net not permitted here: running without the network sandbox)" >&2
        "$@"
    fi
}

install_validator
PY="$VENV/bin/python"
driver="$(mktemp -d)"
trap 'rm -rf "$driver"' EXIT

cat >"$driver/validate.py" <<'PYEOF'
"""Schema (kubernetes-validate, strict, bundled schemas) plus HeadCNI's deployment rules."""
import sys
import tomllib

import kubernetes_validate
from kubernetes_validate import utils as kv

# The public keys of docs/configuration.md ([tailscale_api]: approval = "tailscale-api").
PUBLIC_KEYS = {
    "node": {"name", "pod_cidr", "cluster_cidr", "pod_cidr_from_name_hash", "node_cidr_prefix",
             "kubeconfig", "local_files_root", "firewall_driver", "masquerade_ipv6", "service_cidr",
             "no_masquerade_cidrs", "bridge_netfilter"},
    "cni": {"conf_dir", "bin_dir", "data_dir", "bridge", "mtu", "ipam_strategy", "conflist_name",
            "network_name", "daemon_socket", "chained"},
    "tailscale": {"mode", "socket", "interface", "tailscaled_path", "state_dir", "port",
                  "netfilter_mode"},
    "headscale": {"url", "api_key_file", "approval", "user", "acl_tags", "timeout_secs",
                  "resync_secs"},
    "tailscale_api": {"url", "tailnet", "oauth_file"},
    "magic_dns": {"enable", "base_domain", "nameservers", "search_domains"},
    "daemon": {"listen", "expose_to_network", "state_dir", "reconcile_interval_secs",
               "log_level", "log_format"},
}
# Host mode also needs the host tailscaled's socket directory, /var/run/tailscale.
HOST_PATHS = {"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/headcni",
              "/var/lib/headcni"}
SECRETISH = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def containers(pod):
    return pod.get("initContainers", []) + pod.get("containers", [])


def check_daemonset(ds, err, ctx):
    pod = ds["spec"]["template"]["spec"]
    if pod.get("hostNetwork") is not True:
        err("hostNetwork must be true")
    if pod.get("priorityClassName") != "system-node-critical":
        err("priorityClassName must be system-node-critical")
    if not any(t == {"operator": "Exists"} for t in pod.get("tolerations", [])):
        err("tolerations must include {operator: Exists} (every taint)")
    if "fsGroup" in pod.get("securityContext", {}):
        err("fsGroup would make the API key file group-readable")
    paths = {v["hostPath"]["path"] for v in pod.get("volumes", []) if "hostPath" in v}
    ctx["host_paths"] = paths
    for p in sorted(HOST_PATHS - paths):
        err(f"missing hostPath volume {p}")
    secret_vols = {}
    for v in pod.get("volumes", []):
        s = v.get("secret")
        if s is None:
            continue
        if s.get("defaultMode") != 0o400:
            err(f"secret volume {v['name']}: defaultMode must be 0400, is {oct(s.get('defaultMode', 0o644))}")
        for item in s.get("items", []):
            if item.get("mode", 0o400) != 0o400:
                err(f"secret volume {v['name']}: item {item['path']} mode must be 0400")
        secret_vols[v["name"]] = [i["path"] for i in s.get("items", [])]
    for c in containers(pod):
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                err(f"container {c['name']}: secret in env var {e['name']} (mount it as a file)")
            if "value" in e and any(w in e["name"].upper() for w in SECRETISH):
                err(f"container {c['name']}: env var {e['name']} looks like a secret")
        for ef in c.get("envFrom", []):
            if "secretRef" in ef:
                err(f"container {c['name']}: envFrom a Secret (mount it as a file)")
        for a in c.get("command", []) + c.get("args", []):
            if "api-key" in a.lower() or "api_key" in a.lower() or "apikey" in a.lower():
                err(f"container {c['name']}: API key material on the command line: {a!r}")
        for m in c.get("volumeMounts", []):
            for path in secret_vols.get(m["name"], []):
                ctx.setdefault("secret_files", set()).add(m["mountPath"].rstrip("/") + "/" + path)
    daemon = [c for c in pod.get("containers", []) if "daemon" in c.get("command", [])]
    if len(daemon) != 1:
        err("exactly one container must run `headcni daemon`")
        return
    d = daemon[0]
    cmd = d["command"]
    if "--config" not in cmd:
        err("the daemon must be started with --config")
    else:
        ctx["config_path"] = cmd[cmd.index("--config") + 1] if cmd.index("--config") + 1 < len(cmd) else None
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = d.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("host") != "127.0.0.1":
            err(f"{probe} must be httpGet {path} on host 127.0.0.1")
        ctx.setdefault("probe_ports", set()).add(g.get("port"))
    if not any(c.get("command", [])[1:2] == ["install"] for c in pod.get("initContainers", [])):
        err("an init container must run `headcni install`")


def check_clusterrole(cr, err):
    for r in cr.get("rules", []):
        if r.get("resources") != ["nodes"] or r.get("apiGroups") != [""] \
                or not set(r.get("verbs", [])) <= {"get", "list", "watch"}:
            err(f"ClusterRole may only get/list/watch nodes, found {r}")


def check_config(text, err, ctx):
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        err(f"config.toml does not parse: {e}")
        return
    for section, keys in cfg.items():
        if section not in PUBLIC_KEYS or not isinstance(keys, dict):
            err(f"config.toml: unknown section [{section}]")
            continue
        for k in sorted(set(keys) - PUBLIC_KEYS[section]):
            err(f"config.toml: unknown key {section}.{k}")
    ctx["mode"] = cfg.get("tailscale", {}).get("mode", "host")
    if ctx["mode"] not in ("host", "daemon"):
        err(f"config.toml: tailscale.mode must be host or daemon, is {ctx['mode']!r}")
    approval = cfg.get("headscale", {}).get("approval", "api")
    if approval not in ("api", "auto-approvers", "tailscale-api"):
        err(f"config.toml: unknown headscale.approval {approval!r}")
    if (approval == "api" or ctx["mode"] == "daemon") and "api_key_file" not in cfg.get("headscale", {}):
        err("config.toml: approval = api (and daemon mode) needs headscale.api_key_file")
    if approval == "tailscale-api" and "oauth_file" not in cfg.get("tailscale_api", {}):
        err("config.toml: approval = tailscale-api needs tailscale_api.oauth_file")
    ctx["secret_keys"] = [k for k in (cfg.get("headscale", {}).get("api_key_file"),
                                      cfg.get("tailscale_api", {}).get("oauth_file")) if k]
    ctx["listen"] = cfg.get("daemon", {}).get("listen", "127.0.0.1:8081")


def main(versions, files):
    failures = 0
    for f in files:
        ctx = {}
        def err(msg, f=f):
            nonlocal failures
            failures += 1
            print(f"ERROR {f}: {msg}")
        try:
            resources = kv.resources_from_file(f)
        except SystemExit as e:
            err(str(e))
            continue
        if not resources:
            err("no Kubernetes resource in the file")
        for res in resources:
            name = f"{res.get('kind', '?').lower()}/{res.get('metadata', {}).get('name', '?')}"
            try:
                for version in versions.split(","):
                    kubernetes_validate.validate(res, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                err(f"{name}: no schema for {res.get('apiVersion')} {res.get('kind')} "
                    f"in Kubernetes {version} (unknown kind or apiVersion)")
                continue
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(root)"
                err(f"{name}: {where}: {e.message}")
                continue
            except (KeyError, TypeError) as e:
                err(f"{name}: not a Kubernetes resource: {e!r}")
                continue
            print(f"ok    {f}: {name} valid against Kubernetes {versions} (strict)")
            kind = res["kind"]
            if kind == "DaemonSet":
                check_daemonset(res, err, ctx)
            elif kind == "ClusterRole":
                check_clusterrole(res, err)
            elif kind == "ConfigMap" and "config.toml" in res.get("data", {}):
                check_config(res["data"]["config.toml"], err, ctx)
        for key_file in ctx.get("secret_keys", []):
            if key_file not in ctx.get("secret_files", set()):
                err(f"secret file {key_file} (config.toml) is not a file of a mounted Secret")
        if ctx.get("mode") == "host" and "/var/run/tailscale" not in ctx.get("host_paths", set()):
            err("host mode: missing hostPath volume /var/run/tailscale (the host tailscaled's socket)")
        if "listen" in ctx and "probe_ports" in ctx:
            port = int(ctx["listen"].rsplit(":", 1)[-1])
            if ctx["probe_ports"] != {port}:
                err(f"probe ports {ctx['probe_ports']} differ from daemon.listen {ctx['listen']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
PYEOF

if (($#)); then
    files=("$@")
else
    mapfile -t files < <(find deploy -path deploy/chart -prune -o -type f \( -name '*.yaml' -o -name '*.yml' \) -print | sort)
fi
if ((${#files[@]} == 0)); then
    echo "validate-deploy: no manifest found under deploy/" >&2
    exit 1
fi

echo "== validating ${files[*]} (kubernetes-validate, Kubernetes $K8S_VERSIONS schemas, offline)" >&2
offline "$PY" "$driver/validate.py" "$K8S_VERSIONS" "${files[@]}"

# Self-check: broken copies must be rejected, by the schema and by the rules.
mkdir -p "$driver/broken"
sed 's/^\(      \)hostNetwork: true/\1hostNetwrok: true/' deploy/headcni.yaml >"$driver/broken/schema.yaml"
sed 's/defaultMode: 256/defaultMode: 420/' deploy/headcni.yaml >"$driver/broken/rules.yaml"
printf 'apiVersion: v1\nkind: NoSuchKind\nmetadata: {name: x}\n' >"$driver/broken/kind.yaml"
for broken in schema rules kind; do
    if cmp -s deploy/headcni.yaml "$driver/broken/$broken.yaml"; then
        echo "validate-deploy: self-check could not break the manifest ($broken)" >&2
        exit 1
    fi
    if offline "$PY" "$driver/validate.py" "$K8S_VERSIONS" "$driver/broken/$broken.yaml" >"$driver/out" 2>&1; then
        cat "$driver/out" >&2
        echo "validate-deploy: the validator ACCEPTED a broken manifest ($broken): it cannot be trusted" >&2
        exit 1
    fi
    grep '^ERROR' "$driver/out" | sed "s|$driver/broken/|(broken) |" >&2
done
echo "self-check: the broken manifest was rejected (schema, rules, unknown kind)"
echo "== deploy/ manifests valid" >&2
