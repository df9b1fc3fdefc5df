#!/usr/bin/env bash
# The Kubernetes checks of validate-hyperfleet-k8s.sh plus AWS checks (Secrets Manager secrets,
# RDS and Amazon MQ reachability) when the AWS CLI and credentials are available; otherwise the
# AWS part is skipped with the reason.
#
#   scripts/validate-hyperfleet.sh [namespace]
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
url=$(aws secretsmanager get-secret-value --secret-id "${HYPERFLEET_MQ_SECRET:-hyperfleet/mq-credentials}" \
  --query SecretString --output text 2>/dev/null | sed -n 's/.*"url" *: *"\([^"]*\)".*/\1/p')
case "$url" in
  amqps://*@amqps://*) echo "FAIL  MQ url repeats the scheme"; status=1 ;;
  amqps://*:[0-9]*:[0-9]*) echo "FAIL  MQ url repeats the port"; status=1 ;;
  amqps://*) echo "PASS  MQ url is amqps://" ;;
  *) echo "FAIL  MQ url is not amqps:// (or missing)"; status=1 ;;
esac
exit $status
