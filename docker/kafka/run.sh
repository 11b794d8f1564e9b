#!/bin/bash
# Start one Kafka node in KRaft mode from environment variables, as the official image does:
# every KAFKA_<NAME> becomes a server property (upper case to lower; "___" -> "-",
# "__" -> "_", "_" -> "."), e.g. KAFKA_MIN_INSYNC_REPLICAS=2 -> min.insync.replicas=2.
# CLUSTER_ID (22 characters of base64url) is required; the log dir is formatted on first start
# only. KAFKA_HEAP_OPTS sets the heap (default -Xmx512m -Xms512m).
set -euo pipefail
KAFKA=/opt/kafka
CONFIG=$KAFKA/config/server.properties

if [ -z "${CLUSTER_ID:-}" ]; then
  echo "run.sh: CLUSTER_ID is not set (22 characters of base64url, the same on every node)" >&2
  exit 2
fi

: > "$CONFIG"
have_log_dirs=""
while IFS='=' read -r name value; do
  case "$name" in
    KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS|KAFKA_VERSION) continue ;;
    KAFKA_*) ;;
    *) continue ;;
  esac
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  key=${key//@/_}
  [ "$key" = "log.dirs" ] && have_log_dirs=1
  printf '%s=%s\n' "$key" "$value" >> "$CONFIG"
done < <(env)
[ -n "$have_log_dirs" ] || echo "log.dirs=/var/lib/kafka/data" >> "$CONFIG"

log_dir=$(sed -n 's/^log\.dirs=//p' "$CONFIG" | cut -d, -f1)
java_args=(-cp "$KAFKA/libs/*" "-Dlog4j2.configurationFile=$KAFKA/log4j2.properties")
if [ ! -f "$log_dir/meta.properties" ]; then
  java "${java_args[@]}" kafka.tools.StorageTool format --cluster-id="$CLUSTER_ID" \
    -c "$CONFIG" --ignore-formatted
fi
# shellcheck disable=SC2086 # the heap options are words
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m} -XX:+ExitOnOutOfMemoryError \
  -Djava.awt.headless=true ${KAFKA_OPTS:-} "${java_args[@]}" kafka.Kafka "$CONFIG"
