#!/bin/sh
# The image's HEALTHCHECK: grpc.health.v1 Check against this container's sluiced through
# the sluice CLI, which exits 0 only for SERVING (health needs no API key). It follows
# SLUICE_LISTEN; with SLUICE_TLS_CERT it verifies against SLUICE_HEALTHCHECK_TLS_CA
# (default: the server certificate itself, right for a self-signed one).
set -eu
listen=${SLUICE_LISTEN:-0.0.0.0:50051}
host=${listen%:*}
port=${listen##*:}
case "$host" in
  "" | 0.0.0.0 | "[::]" | "*") host=127.0.0.1 ;;
esac
set -- --server="$host:$port" --timeout_s="${SLUICE_HEALTHCHECK_TIMEOUT_S:-3}"
if [ -n "${SLUICE_TLS_CERT:-}" ]; then
  set -- "$@" --tls_ca="${SLUICE_HEALTHCHECK_TLS_CA:-$SLUICE_TLS_CERT}"
fi
exec /usr/local/bin/sluice "$@" health
