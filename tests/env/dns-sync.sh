#!/usr/bin/env bash
# The cluster-DNS stand-in's other half (tests/env/node.sh runs it next to dnsmasq):
#
#   dns-sync.sh KUBECONFIG HOSTS_FILE DNSMASQ_PIDFILE
#
# Watches the Services; on every change (bursts taken together) lists them and writes
# `<clusterIP> <name>.<namespace>.svc.cluster.local` lines to HOSTS_FILE, and when they changed sends
# SIGHUP to dnsmasq, which rereads the file. Headless Services (clusterIP None) are left out: nothing
# in this project uses them. A watch that ends (apiserver restart, server timeout) is started again.
set -uo pipefail
kubeconfig=$1 hosts=$2 pidfile=$3
template='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}'
k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

resync() {
  local new
  new=$(k --request-timeout=5s get services -A -o jsonpath="$template" 2>/dev/null) || return
  new=$(printf '%s\n' "$new" | grep -v '^None ' | sort)
  if [ -n "$new" ] && [ "$new" != "$(cat "$hosts" 2>/dev/null)" ]; then
    printf '%s\n' "$new" > "$hosts.tmp" && mv "$hosts.tmp" "$hosts"
    [ -s "$pidfile" ] && kill -HUP "$(cat "$pidfile")" 2>/dev/null
    echo "$(date -u +%FT%TZ) $(wc -l < "$hosts") records"
  fi
}

while :; do
  # --watch prints the current Services first, so nothing between two watches is missed.
  k get services -A --watch -o name 2>/dev/null | while read -r _; do
    while read -r -t 0.2 _; do :; done
    resync
  done
  sleep 1
done
