#!/usr/bin/env bash
# Kubernetes-only checks of an installed hyperfleet-system release (no AWS CLI needed).
#
#   scripts/validate-hyperfleet-k8s.sh [namespace]      (default: hyperfleet-system)
#
# Prints one PASS / FAIL / SKIP line per check and exits 1 when any check fails. Uses kubectl
# (KUBECTL to override) with the current context (KUBECONFIG as usual).
set -uo pipefail
NS=${1:-${HYPERFLEET_NAMESPACE:-hyperfleet-system}}
K=${KUBECTL:-kubectl}
failed=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failed=1; }
skip() { printf 'SKIP  %s\n' "$*"; }
k() { "$K" -n "$NS" "$@" 2>/dev/null; }

command -v "$K" >/dev/null || { echo "kubectl not found (set KUBECTL)"; exit 2; }
if "$K" get namespace "$NS" >/dev/null 2>&1; then pass "namespace $NS exists"; else fail "namespace $NS missing"; exit 1; fi

# The node count, or "unknown" for a caller who may not list nodes (namespace-scoped RBAC): then a
# Deployment that is not ready is a FAIL, never a "this cluster has no nodes" SKIP.
if node_list=$("$K" get nodes --no-headers 2>/dev/null); then
  nodes=$(printf '%s' "$node_list" | grep -c . || true)
else
  nodes=unknown
fi

# why_not_ready DEPLOYMENT: each of its pods that is not Ready, with what its containers wait for
# (ErrImagePull, CrashLoopBackOff, ContainerCreating…) and the pod's last three distinct warnings
# (a transient one, such as the kubelet's cache not synced yet, does not hide the one that stays).
why_not_ready() {
  local pod states event
  for pod in $(k get pods -l "app.kubernetes.io/name=$1" -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | awk '$2 != "True" {print $1}'); do
    states=$(k get pod "$pod" -o jsonpath='{range .status.initContainerStatuses[*]}{.name}={.state.waiting.reason}{.state.terminated.reason} {end}{range .status.containerStatuses[*]}{.name}={.state.waiting.reason}{.state.terminated.reason}{.state.running.startedAt} {end}')
    event=$(k get events --field-selector "involvedObject.name=$pod,type=Warning" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' |
      awk 'NF && !seen[$0]++' | tail -n 3 | sed ':a;N;$!ba;s/\n/; /g')
    printf '      pod %s: %s%s\n' "$pod" "${states:-no container started}" "${event:+ — last warnings: $event}"
  done
}
# The release's other workers: the nodepool sentinel and the adapters of hyperfleetAdapters, when deployed.
extra=$(k get deployments -l app.kubernetes.io/part-of=hyperfleet -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' |
  grep -E '^hyperfleet-(sentinel|adapter)-.' | sort)
for d in hyperfleet-api hyperfleet-sentinel hyperfleet-adapter $extra; do
  if ! k get deployment "$d" >/dev/null; then fail "deployment $d missing"; continue; fi
  want=$(k get deployment "$d" -o jsonpath='{.spec.replicas}')
  ready=$(k get deployment "$d" -o jsonpath='{.status.readyReplicas}')
  if [ "${ready:-0}" = "$want" ]; then
    pass "deployment $d: $ready/$want ready"
  elif [ "$nodes" = 0 ]; then
    skip "deployment $d: 0/$want ready — this cluster has no nodes, so no pod can run (a bare control plane)"
  else
    fail "deployment $d: ${ready:-0}/$want ready (kubectl describe deployment $d -n $NS)"
    why_not_ready "$d"
  fi
done

for s in hyperfleet-api:8000 hyperfleet-api:8080 hyperfleet-api:9090 hyperfleet-sentinel:8080 hyperfleet-adapter:8080 \
  $(for d in $extra; do printf '%s:8080 ' "$d"; done); do
  svc=${s%:*} port=${s#*:}
  if k get service "$svc" -o jsonpath='{.spec.ports[*].port}' | tr ' ' '\n' | grep -qx "$port"; then
    pass "service $svc exposes $port"
  else
    fail "service $svc does not expose $port"
  fi
done

for cm in hyperfleet-sentinel-broker-config hyperfleet-adapter-broker-config $(for d in $extra; do printf '%s-broker-config ' "$d"; done); do
  t=$(k get configmap "$cm" -o jsonpath='{.data.broker\.yaml}' | sed -n 's/^ *exchange_type: *"\{0,1\}\([a-z]*\)"\{0,1\}/\1/p')
  if [ -n "$t" ]; then pass "configmap $cm: exchange_type $t"; else fail "configmap $cm: no exchange_type"; fi
done
st=$(k get configmap hyperfleet-sentinel-broker-config -o jsonpath='{.data.broker\.yaml}' | grep exchange_type)
at=$(k get configmap hyperfleet-adapter-broker-config -o jsonpath='{.data.broker\.yaml}' | grep exchange_type)
if [ "$st" = "$at" ]; then pass "sentinel and adapter agree on the exchange type"; else fail "exchange types differ: sentinel '$st', adapter '$at'"; fi

# What the Deployments really reference: SecretProviderClasses (AWS mode) and Secrets (env and
# volumes). A missing one is the most likely reason pods wait in ContainerCreating or
# CreateContainerConfigError, so each is a FAIL with what provides it.
spcs=$(k get deployments -o jsonpath='{range .items[*]}{range .spec.template.spec.volumes[*]}{.csi.volumeAttributes.secretProviderClass}{"\n"}{end}{end}' | sort -u | sed '/^$/d')
secrets=$(k get deployments -o jsonpath='{range .items[*]}{range .spec.template.spec.containers[*]}{range .env[*]}{.valueFrom.secretKeyRef.name}{"\n"}{end}{end}{range .spec.template.spec.initContainers[*]}{range .env[*]}{.valueFrom.secretKeyRef.name}{"\n"}{end}{end}{range .spec.template.spec.volumes[*]}{.secret.secretName}{"\n"}{end}{end}' | sort -u | sed '/^$/d')
if [ -n "$spcs" ]; then
  # Listing in the namespace tells "no such API" from "not allowed" without cluster-wide rights.
  spc_err=$("$K" -n "$NS" get secretproviderclasses.secrets-store.csi.x-k8s.io 2>&1 >/dev/null || true)
  if [[ $spc_err == *"doesn't have a resource type"* ]]; then
    fail "SecretProviderClass API missing: install the Secrets Store CSI driver (with syncSecret.enabled=true) and the AWS provider (ASCP), or use usePodIdentity: false with Kubernetes Secrets"
  elif [ -n "$spc_err" ]; then
    skip "SecretProviderClasses: cannot read them ($spc_err)"
  else
    for spc in $spcs; do
      if k get secretproviderclass "$spc" >/dev/null; then pass "SecretProviderClass $spc"; else fail "SecretProviderClass $spc missing"; fi
    done
    # The driver records each successful mount; none for a pod means its volume never mounted.
    if [ "$(k get secretproviderclasspodstatuses --no-headers | wc -l)" -gt 0 ]; then
      pass "Secrets Store CSI driver mounted secrets into $(k get secretproviderclasspodstatuses --no-headers | wc -l) pod(s)"
    else
      fail "no SecretProviderClassPodStatus in $NS: no secret was mounted yet (kubectl describe pod; check the Pod Identity association or IRSA role and the ASCP pods)"
    fi
  fi
else
  skip "no SecretProviderClass referenced (Kubernetes Secrets or in-cluster mode)"
fi
for sec in $secrets; do
  if k get secret "$sec" >/dev/null; then
    pass "secret $sec present"
  else
    case "$sec" in
      *-mq-secret) fail "secret $sec missing: in AWS mode the CSI driver creates it from the SecretProviderClass (needs syncSecret.enabled=true); otherwise create it with key BROKER_RABBITMQ_URL or set broker.external.url" ;;
      hyperfleet-api-db-secret) fail "secret $sec missing: create it with keys db.host, db.port, db.user, db.password, db.name or set hyperfleetApi.database.external.credentials" ;;
      *) fail "secret $sec missing (referenced by a Deployment)" ;;
    esac
  fi
done
for sa in hyperfleet-api-sa sentinel-sa hyperfleet-adapter-sa $(for d in $extra; do case $d in hyperfleet-adapter-*) printf '%s-sa ' "$d" ;; esac; done); do
  arn=$(k get serviceaccount "$sa" -o jsonpath='{.metadata.annotations.eks\.amazonaws\.com/role-arn}')
  if ! k get serviceaccount "$sa" >/dev/null; then fail "serviceaccount $sa missing"
  elif [ -n "$arn" ]; then pass "serviceaccount $sa: role $arn"
  else skip "serviceaccount $sa: no Pod Identity role annotation"; fi
done

api_ready=$(k get deployment hyperfleet-api -o jsonpath='{.status.readyReplicas}')
if [ "${api_ready:-0}" -ge 1 ]; then
  port=$(( 20000 + RANDOM % 10000 ))
  # kubectl itself in the background (not a function wrapping it), so $! is what must be stopped.
  "$K" -n "$NS" port-forward service/hyperfleet-api "$port:8080" >/dev/null 2>&1 &
  pf=$!
  trap 'kill "$pf" 2>/dev/null' EXIT
  ok=0
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && { ok=1; break; }; sleep 0.2; done
  kill "$pf" 2>/dev/null
  if [ $ok = 1 ]; then pass "API /readyz through a port-forward"; else fail "API /readyz not reachable through a port-forward"; fi
else
  skip "API health through a port-forward: no API pod is ready"
fi

[ $failed = 0 ] && echo "all checks passed (or skipped with a reason)" || echo "some checks failed"
exit $failed
