#!/bin/sh
# The image's ENTRYPOINT: turns SLUICE_* environment variables into sluiced flags and
# execs sluiced, so sluiced is the container's main process and gets SIGTERM itself.
#
#   SLUICE_<FLAG>=value    → --<flag>=value for every sluiced flag listed below, e.g.
#                            SLUICE_MODEL, SLUICE_LISTEN, SLUICE_METRICS_LISTEN,
#                            SLUICE_HTTP_LISTEN, SLUICE_API_KEYS_FILE, SLUICE_THREADS,
#                            SLUICE_KV_CACHE_MEMORY, SLUICE_DRAIN_GRACE_S.
#                            Set-but-empty passes an empty value (SLUICE_METRICS_LISTEN=
#                            turns /metrics off); unset leaves the flag alone.
#   SLUICE_EXTRA_ARGS      → split on spaces and appended (any other flag)
#   container arguments    → appended last, so they win over the environment.
set -eu

# sluiced's flags (sluiced --helpfull); one that this build lacks fails only when its
# variable is set.
FLAGS="model served_model_name listen metrics_listen http_listen http_threads http_max_body_bytes
http_request_timeout_s output_parser threads max_num_seqs max_num_batched_tokens max_queue
itl_target_ms itl_target_factor max_model_len kv_cache_memory matmul_precision expert_metrics
max_message_bytes max_prompt_tokens max_output_tokens max_stop_strings max_stop_string_bytes
max_logprobs max_streams_per_connection drain_grace_s drain_timeout_s api_keys_file tls_cert
tls_key tls_client_ca port_file http_port_file"

nargs=$# value=
for flag in $FLAGS; do
  var=SLUICE_$(echo "$flag" | tr '[:lower:]' '[:upper:]')
  if eval "[ -n \"\${$var+set}\" ]"; then
    eval "value=\${$var}"
    set -- "$@" "--$flag=$value"
  fi
done
# shellcheck disable=SC2086  # word splitting is the point
set -- "$@" ${SLUICE_EXTRA_ARGS:-}
# Move the container's own arguments (the first $nargs) behind the ones made above.
while [ "$nargs" -gt 0 ]; do
  set -- "$@" "$1"
  shift
  nargs=$((nargs - 1))
done
exec /usr/local/bin/sluiced "$@"
