#!/usr/bin/env bash
# The compose cluster's steps, for `make compose-*` and CI:
#   base      make the Debian base image (BASE_IMAGE) with debootstrap, unless docker has it
#   stage     copy the Kafka jars (fetched from Maven Central as `lukhas up` does) and the
#             host's extra CA certificates into the build contexts
#   build     base + stage + docker-compose build
#   up        build, start everything, wait until every service is healthy and the topics exist
#   down      stop and remove the containers (keeps the volumes)
#   clean     down, and remove the volumes
#   dockerd   start dockerd (cgroupfs, overlay2) when no engine answers; print its pid
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-lukhas/debian:bookworm}
PYTHON=${PYTHON:-.venv/bin/python}
COMPOSE=${COMPOSE:-docker-compose}
export BASE_IMAGE

die() { echo "docker/compose.sh: $*" >&2; exit 1; }

need_engine() {
  command -v docker >/dev/null || die "no docker CLI: install docker.io (and docker-compose)"
  docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd; as root on \
Debian: 'dockerd &', or 'bash docker/compose.sh dockerd')"
}

base() {
  need_engine
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  command -v debootstrap >/dev/null || die "no $BASE_IMAGE image and no debootstrap to make one"
  local root
  root=$(mktemp -d /var/tmp/lukhas-rootfs.XXXXXX)
  echo "making $BASE_IMAGE with debootstrap (about a minute)"
  debootstrap --variant=minbase bookworm "$root" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
  tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$root" "$root.log"
}

stage() {
  [ -x "$PYTHON" ] || die "no $PYTHON: run 'make venv' first"
  "$PYTHON" - <<'PY'
import shutil
from pathlib import Path

from lukhas_context.ops.kafka_dist import DEFAULT_VERSION, default_cache_dir, ensure_kafka

ensure_kafka(DEFAULT_VERSION, None, None)
source = default_cache_dir(DEFAULT_VERSION) / "libs"
target = Path("docker/kafka/libs")
target.mkdir(exist_ok=True)
wanted = {jar.name for jar in source.glob("*.jar")}
for old in target.glob("*.jar"):
    if old.name not in wanted:
        old.unlink()
for jar in source.glob("*.jar"):
    copy = target / jar.name
    if not copy.exists() or copy.stat().st_size != jar.stat().st_size:
        shutil.copy2(jar, copy)
print(f"staged {len(wanted)} Kafka {DEFAULT_VERSION} jars in {target}")
PY
  rm -f docker/certs/*.crt
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt docker/certs/
  fi
}

build() {
  base
  stage
  $COMPOSE build -q
}

up() {
  build
  $COMPOSE up -d
  wait_healthy
}

# Every long-running service healthy and the one-shot topic creation exited 0, within 5 min.
wait_healthy() {
  local deadline=$((SECONDS + 300)) unhealthy
  while :; do
    unhealthy=""
    for service in kafka-1 kafka-2 kafka-3 redis worker-1 worker-2; do
      id=$($COMPOSE ps -q "$service")
      state=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo missing)
      [ "$state" = healthy ] || unhealthy="$unhealthy $service:$state"
    done
    topics=$($COMPOSE ps -q topics)
    topics_exit=$(docker inspect -f '{{.State.Status}}:{{.State.ExitCode}}' "$topics" 2>/dev/null || echo missing)
    case "$topics_exit" in
      exited:0) ;;
      exited:*) $COMPOSE logs topics >&2; die "topic creation failed ($topics_exit)" ;;
      *) unhealthy="$unhealthy topics:$topics_exit" ;;
    esac
    # Healthy workers may still be settling their group: wait until every partition is served.
    if [ -z "$unhealthy" ]; then
      served=$(docker exec "$($COMPOSE ps -q worker-1)" python3 -c "import json, urllib.request as u
print(len(json.load(u.urlopen('http://127.0.0.1:8080/v1/members', timeout=5))['owners']))" 2>/dev/null || echo 0)
      [ "$served" = "${LUKHAS_PARTITIONS:-6}" ] && { echo "compose cluster healthy, all partitions served"; return; }
      unhealthy=" partitions-served:$served"
    fi
    if [ $SECONDS -ge $deadline ]; then
      $COMPOSE ps >&2
      die "not healthy after 300 s:$unhealthy"
    fi
    sleep 2
  done
}

down() { $COMPOSE down --remove-orphans; }
clean() { $COMPOSE down --remove-orphans --volumes; }

dockerd_start() {
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || die "no dockerd: install docker.io"
  mkdir -p /var/log
  nohup dockerd --exec-opt native.cgroupdriver=cgroupfs --storage-driver overlay2 \
    >/var/log/lukhas-dockerd.log 2>&1 </dev/null &
  echo $! >/var/run/lukhas-dockerd.pid
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { echo "dockerd started (pid $(cat /var/run/lukhas-dockerd.pid))"; return; }
    sleep 0.5
  done
  tail -20 /var/log/lukhas-dockerd.log >&2
  die "dockerd did not answer within 30 s"
}

case "${1:-}" in
  base) base ;;
  stage) stage ;;
  build) build ;;
  up) up ;;
  wait) wait_healthy ;;
  down) down ;;
  clean) clean ;;
  dockerd) dockerd_start ;;
  *) die "usage: docker/compose.sh base|stage|build|up|wait|down|clean|dockerd" ;;
esac
