#!/usr/bin/env bash
# The Kubernetes checks of validate-hyperfleet-k8s.sh plus AWS checks when the AWS CLI and
# credentials are available (otherwise skipped with the reason): the Secrets Manager secrets exist
# and have the shapes the chart's SecretProviderClasses read (a string `port`; an amqps:// `url`
# with a URL-encoded password), and RDS and Amazon MQ accept TCP connections from this machine
# (a private RDS answers only inside its VPC: run the script from a bastion, or set
# HYPERFLEET_SKIP_REACHABILITY=1; the pods' readiness, checked above, is the in-cluster proof).
#
#   scripts/validate-hyperfleet.sh [namespace]
#
# HYPERFLEET_DB_SECRET / HYPERFLEET_MQ_SECRET: the secret names (hyperfleet/db-credentials,
# hyperfleet/mq-credentials).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$HERE/validate-hyperfleet-k8s.sh" "$@"
status=$?
if ! command -v aws >/dev/null; then
  echo "SKIP  AWS checks: the AWS CLI is not installed"
  exit $status
fi
if ! aws sts get-caller-identity >/dev/null 2>&1; then
  echo "SKIP  AWS checks: no AWS credentials"
  exit $status
fi
for secret in "${HYPERFLEET_DB_SECRET:-hyperfleet/db-credentials}" "${HYPERFLEET_MQ_SECRET:-hyperfleet/mq-credentials}"; do
  if aws secretsmanager describe-secret --secret-id "$secret" >/dev/null 2>&1; then
    echo "PASS  Secrets Manager secret $secret exists"
  else
    echo "FAIL  Secrets Manager secret $secret missing or not readable"; status=1
  fi
done
json() { aws secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text 2>/dev/null; }
command -v python3 >/dev/null || { echo "SKIP  secret shape checks: python3 is needed to read the secrets' JSON"; exit $status; }
field() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print(type(v).__name__, v if v is not None else "")' "$1"; }
# reachable HOST PORT: a TCP connection opens within 5 s.
# shellcheck disable=SC2016 # $0 and $1 are the inner shell's arguments
reachable() { timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

db=$(json "${HYPERFLEET_DB_SECRET:-hyperfleet/db-credentials}")
db_host=$(printf '%s' "$db" | field host 2>/dev/null | cut -d' ' -f2-)
read -r port_type db_port < <(printf '%s' "$db" | field port 2>/dev/null || echo "missing ")
if [ "$port_type" = str ]; then
  echo "PASS  DB secret: port is a string ($db_port)"
elif [ "$port_type" = missing ] || [ "$port_type" = NoneType ]; then
  echo "FAIL  DB secret: no port (or the secret is not JSON)"; status=1
else
  echo "FAIL  DB secret: port must be a JSON string (\"5432\"), the AWS provider rejects a $port_type"; status=1
fi

url=$(json "${HYPERFLEET_MQ_SECRET:-hyperfleet/mq-credentials}" | field url 2>/dev/null | cut -d' ' -f2-)
# check_mq_url URL: prints "host port" or, on stderr, what is wrong with it. The userinfo must be
# URL-encoded: a raw ?, /, # or a second @ in the password changes where the host starts.
# shellcheck disable=SC2016 # a Python program
mq_check='
import sys, urllib.parse as u
url = sys.argv[1]
if url.count("amqps://") > 1: sys.exit("repeats the scheme")
parts = u.urlsplit(url)
if parts.scheme != "amqps": sys.exit("is not amqps:// (or missing)")
if parts.netloc.count("@") != 1: sys.exit("needs exactly one @ between user:password and the host (encode @ in the password as %40)")
userinfo, hostport = parts.netloc.rsplit("@", 1)
if ":" not in userinfo: sys.exit("has no user:password@ part")
if hostport.count(":") > 1 and not hostport.startswith("["): sys.exit("repeats the port (" + hostport + ")")
try:
    port = parts.port or 5671
except ValueError:
    sys.exit("has a port that is not a number (" + hostport + ")")
if not parts.hostname: sys.exit("has no host")
print(parts.hostname, port)
'
if mq=$(python3 -c "$mq_check" "$url" 2>&1); then
  read -r mq_host mq_port <<<"$mq"
  echo "PASS  MQ url is amqps:// (host $mq_host, port $mq_port)"
else
  # Only the reason: the URL carries the password.
  echo "FAIL  MQ url $mq"; status=1
  mq_host="" mq_port=""
fi

# check_reachable WHAT HOST PORT
check_reachable() {
  if [ -z "$2" ]; then
    echo "SKIP  $1 reachability: no host in the secret"
  elif reachable "$2" "$3"; then
    echo "PASS  $1 $2:$3 accepts TCP connections from this machine"
  else
    echo "FAIL  $1 $2:$3 does not accept TCP connections from this machine (private subnet? security group?)"; status=1
  fi
}
if [ "${HYPERFLEET_SKIP_REACHABILITY:-}" = 1 ]; then
  echo "SKIP  RDS/Amazon MQ reachability (HYPERFLEET_SKIP_REACHABILITY=1)"
else
  check_reachable RDS "$db_host" "${db_port:-5432}"
  check_reachable "Amazon MQ" "$mq_host" "${mq_port:-5671}"
fi
exit $status
