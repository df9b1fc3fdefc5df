#!/usr/bin/env bash
# Creates a test cluster through the API and follows it to its Namespace and Reconciled=True.
#
#   scripts/test-create-cluster.sh [name]
#
# HYPERFLEET_API_URL: the API (default: a port-forward to svc/hyperfleet-api in $HYPERFLEET_NAMESPACE,
# default hyperfleet-system). HYPERFLEET_TOKEN: a bearer token when JWT is on. TIMEOUT: seconds (120).
set -euo pipefail
NAME=${1:-test-$(date +%s)}
NS=${HYPERFLEET_NAMESPACE:-hyperfleet-system}
K=${KUBECTL:-kubectl}
TIMEOUT=${TIMEOUT:-120}
API=${HYPERFLEET_API_URL:-}
if [ -z "$API" ]; then
  port=$(( 20000 + RANDOM % 10000 ))
  "$K" -n "$NS" port-forward service/hyperfleet-api "$port:8000" >/dev/null 2>&1 &
  trap 'kill $! 2>/dev/null' EXIT
  API=http://127.0.0.1:$port
  for _ in $(seq 50); do curl -fsS "$API/api/hyperfleet" >/dev/null 2>&1 && break; sleep 0.2; done
fi
auth=()
[ -n "${HYPERFLEET_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $HYPERFLEET_TOKEN")
body=$(printf '{"kind":"Cluster","name":"%s","spec":{"region":"test"}}' "$NAME")
created=$(curl -fsS ${auth[@]+"${auth[@]}"} -H 'Content-Type: application/json' -d "$body" "$API/api/hyperfleet/v1/clusters")
id=$(printf '%s' "$created" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "create failed: $created" >&2; exit 1; }
echo "created cluster $NAME ($id)"
deadline=$(( $(date +%s) + TIMEOUT ))
# The adapter names the Namespace after the cluster's id and labels it with the cluster's name.
until [ -n "$("$K" get namespaces -l "hyperfleet.io/cluster-id=$id" -o name 2>/dev/null)" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "no Namespace labelled hyperfleet.io/cluster-id=$id after ${TIMEOUT}s" >&2; exit 1; }
  sleep 0.5
done
echo "Namespace $id exists (kubectl get namespaces -l hyperfleet.io/cluster-name=$NAME)"
reconciled() { # the Reconciled condition object, whatever the key order, says True
  local body cond
  body=$(curl -fsS ${auth[@]+"${auth[@]}"} "$API/api/hyperfleet/v1/clusters/$id") || return 1
  cond=$(printf '%s' "$body" | grep -o '{[^{}]*"type":"Reconciled"[^{}]*}') || return 1
  [[ $cond == *'"status":"True"'* ]]
}
until reconciled; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "cluster $id not Reconciled after ${TIMEOUT}s" >&2; exit 1; }
  sleep 0.5
done
echo "cluster $id is Reconciled"
