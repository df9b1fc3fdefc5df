#!/usr/bin/env bash
# checkov on the rendered chart: the default values (AWS: RDS and Amazon MQ through the Secrets Store
# CSI driver and Pod Identity), development mode (ci/in-cluster-values.yaml) and the seed-002 platform
# (Istio, Secrets from values, a private CA), each rendered with real helm into a temporary folder. The checks listed in tests/env/checkov-skips.txt
# (`CKV_K8S_<n>  reason`, one a line) are deliberate and skipped; any other finding fails, and so does a
# listed check that no longer fails anywhere (the list, and the README's copy of it, stay exact).
# Called by `tests/env/run test`; alone: tests/env/checkov.sh (HF_HELM, HF_CHECKOV name the binaries).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${HYPERFLEET_LOCAL_DIR:-$ROOT/.local}
CHART=$ROOT/charts/hyperfleet-system
SKIPS=$ROOT/tests/env/checkov-skips.txt
HELM=${HF_HELM:-/usr/local/bin/helm}
CHECKOV=${HF_CHECKOV:-$STATE/tools/venv/bin/checkov}

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
[ -x "$HELM" ] || die "no helm at $HELM (tests/env/run install puts it in /usr/local/bin)"
[ -x "$CHECKOV" ] || die "no checkov at $CHECKOV (tests/env/run infra installs it)"

# The list, and the README's copy of it (a line "- `ID`: reason" per check, nothing else).
README=$ROOT/README.md
ids=()
while read -r id reason || [ -n "$id" ]; do
  case $id in '' | '#'*) continue ;; esac
  [[ $id =~ ^CKV2?_K8S_[0-9]+$ ]] || die "$SKIPS: '$id' is not a checkov Kubernetes check id"
  [ -n "$reason" ] || die "$SKIPS: $id has no reason"
  grep -qxF -- "- \`$id\`: $reason" "$README" || die "README.md does not list \"- \`$id\`: $reason\" (checkov paragraph)"
  ids+=("$id")
done < "$SKIPS"
[ "${#ids[@]}" -gt 0 ] || die "$SKIPS lists no check"
# shellcheck disable=SC2016 # the backticks are Markdown, not a command substitution
listed=$(grep -cE '^- `CKV2?_K8S_[0-9]+`: ' "$README" || true)
[ "$listed" = "${#ids[@]}" ] || die "README.md lists $listed checkov checks as deliberate, $SKIPS ${#ids[@]}"
skip=$(IFS=,; printf '%s' "${ids[*]}")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
aws=()
for c in Api Sentinel Adapter; do
  aws+=(--set "hyperfleet$c.aws.podIdentity.roleArn=arn:aws:iam::111122223333:role/hyperfleet-${c,,}")
done
"$HELM" template hyperfleet "$CHART" "${aws[@]}" --output-dir "$tmp/aws" >/dev/null
"$HELM" template hyperfleet "$CHART" -f "$CHART/ci/in-cluster-values.yaml" --output-dir "$tmp/dev" >/dev/null
# The seed-002 platform: Istio, Secrets made from values (K3s without Pod Identity), a private CA.
platform=(--set mesh.enabled=true --set mesh.istio.cni=true --set createNamespace=true
  --set hyperfleetApi.database.external.usePodIdentity=false --set hyperfleetApi.database.external.sslMode=verify-full
  --set hyperfleetApi.database.external.credentials.host=db.example.com
  --set hyperfleetApi.database.external.credentials.user=hyperfleet
  --set hyperfleetApi.database.external.credentials.password=not-a-secret
  --set hyperfleetApi.database.external.caBundle.configMap=platform-ca)
for c in Sentinel Adapter; do
  platform+=(--set "hyperfleet$c.broker.external.usePodIdentity=false"
    --set "hyperfleet$c.broker.external.url=amqps://u:p@mq.example.com:5671"
    --set "hyperfleet$c.broker.external.caBundle.configMap=platform-ca")
done
"$HELM" template hyperfleet "$CHART" "${platform[@]}" --output-dir "$tmp/platform" >/dev/null

# One run over the three folders (findings name their file: /aws/…, /dev/… or /platform/…). No download: no network here,
# and nothing from the Bridgecrew platform is wanted.
cd "$tmp"
if ! "$CHECKOV" -d . --framework kubernetes --quiet --compact --skip-download --skip-check "$skip"; then
  die "checkov: the findings above are not in $SKIPS: fix the chart, or list the check with its reason"
fi

# Every listed check must still fail somewhere, or its line (and the README's) is stale.
"$CHECKOV" -d . --framework kubernetes --quiet --compact --skip-download --check "$skip" -o json > "$tmp/listed.json" || true
fired=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(sorted({f["check_id"] for r in (d if isinstance(d, list) else [d]) for f in r["results"]["failed_checks"]})))
' "$tmp/listed.json")
stale=()
for id in "${ids[@]}"; do
  [[ " $fired " == *" $id "* ]] || stale+=("$id")
done
[ "${#stale[@]}" = 0 ] || die "checkov: listed but failing in no render: ${stale[*]}: remove them from $SKIPS and the README"
echo "checkov: the three renders are clean apart from the ${#ids[@]} deliberate checks in tests/env/checkov-skips.txt"
