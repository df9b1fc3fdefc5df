#!/usr/bin/env bash
# The cluster-DNS stand-in's other half (tests/env/node.sh runs it next to dnsmasq):
#
#   dns-sync.sh KUBECONFIG HOSTS_FILE DNSMASQ_PIDFILE
#
# Every second, lists the Services and writes `<clusterIP> <name>.<namespace>.svc.cluster.local`
# lines to HOSTS_FILE; when they changed, sends SIGHUP to dnsmasq, which rereads the file. Headless
# Services (clusterIP None) are left out: nothing in this project uses them.
set -uo pipefail
kubeconfig=$1 hosts=$2 pidfile=$3
template='{range .items[*]}{.spec.clusterIP} {.metadata.name}.{.metadata.namespace}.svc.cluster.local{"\n"}{end}'
while :; do
  if new=$(kubectl --kubeconfig "$kubeconfig" --request-timeout=5s get services -A -o jsonpath="$template" 2>/dev/null); then
    new=$(printf '%s\n' "$new" | grep -v '^None ' | sort)
    if [ -n "$new" ] && [ "$new" != "$(cat "$hosts" 2>/dev/null)" ]; then
      printf '%s\n' "$new" > "$hosts.tmp" && mv "$hosts.tmp" "$hosts"
      [ -s "$pidfile" ] && kill -HUP "$(cat "$pidfile")" 2>/dev/null
      echo "$(date -u +%FT%TZ) $(wc -l < "$hosts") records"
    fi
  fi
  sleep 1
done
