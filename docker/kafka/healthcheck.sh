#!/bin/bash
# Healthy when the broker answers a Kafka request: an ApiVersions (v0) request on PORT
# (default 9092) gets a reply with our correlation id and error code 0. Costs no JVM start.
set -euo pipefail
exec 3<>"/dev/tcp/127.0.0.1/${1:-9092}" 2>/dev/null || exit 1
printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02hc' >&3
reply=$(timeout 3 head -c 10 <&3 | od -An -tx1 | tr -d ' \n')
[ "${reply:8:12}" = "000000010000" ]
