#!/usr/bin/env bash
# Installs what is missing and starts what is not running, on 127.0.0.1, for the tests and the
# demo: a Kafka-protocol broker (Tansu), RabbitMQ, and the moto S3/STS server. Also installs the
# Debian packages the Rust build needs. Runs as root on Debian; safe to run again: services that
# already listen are reused, installed versions are kept.
#
#   scripts/local-services.sh [start|stop|status]
#
# Versions are pinned below. Nothing is downloaded as a prebuilt binary: Tansu is built from
# crates.io with `cargo install --locked` (cargo checks every crate against the registry's
# checksums), moto comes from PyPI into its own virtualenv, the rest from Debian's signed archive.
set -euo pipefail

TANSU_VERSION=0.6.0
MOTO_VERSION=5.2.5
PREFIX=${ACTIVITY_SERVICES_PREFIX:-/opt/activity-logs}
STATE=${ACTIVITY_SERVICES_STATE:-/var/lib/activity-logs}
KAFKA_PORT=${ACTIVITY_LOCAL_KAFKA_PORT:-9092}
RABBITMQ_PORT=5672
MOTO_PORT=${ACTIVITY_LOCAL_MOTO_PORT:-5000}

TANSU_BIN="$PREFIX/tansu-$TANSU_VERSION/bin/tansu"
MOTO_VENV="$PREFIX/moto-$MOTO_VERSION"
BUILD_PACKAGES=(cmake g++ make libcurl4-openssl-dev libsasl2-dev libssl-dev zlib1g-dev libzstd-dev
  pkg-config python3-venv python3-yaml ca-certificates curl openssl socat)
# promtool, for the test that checks the Prometheus configuration and alert rules: unpacked from
# Debian's prometheus package, without installing (and starting) the server.
PROMTOOL_DIR="$PREFIX/promtool"
PROMTOOL_BIN="$PROMTOOL_DIR/usr/bin/promtool"

log() { printf '[local-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port name seconds logfile
  local deadline=$((SECONDS + $3))
  until listening "$1"; do
    if ((SECONDS >= deadline)); then
      [[ -n ${4:-} && -f $4 ]] && tail -n 20 "$4" >&2
      die "$2 did not start listening on 127.0.0.1:$1 within $3 s"
    fi
    sleep 0.2
  done
}

apt_updated=
apt_install() {
  [[ $(id -u) -eq 0 ]] || die "installing $* needs root"
  if [[ -z $apt_updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
  done
}

ensure_build_deps() {
  local missing
  mapfile -t missing < <(missing_packages "${BUILD_PACKAGES[@]}")
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
  command -v cargo >/dev/null ||
    die "cargo is not installed: install Rust 1.90 or later (https://rustup.rs), then run this again"
}

install_promtool() {
  [[ -x $PROMTOOL_BIN ]] && return 0
  log "unpacking promtool from Debian's prometheus package into $PROMTOOL_DIR"
  local download
  download=$(mktemp -d)
  if [[ -z $apt_updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  (cd "$download" && apt-get download -qq prometheus >/dev/null) || die "cannot download Debian's prometheus package"
  dpkg-deb -x "$download"/prometheus_*.deb "$PROMTOOL_DIR"
  rm -rf "$download"
  [[ -x $PROMTOOL_BIN ]] || die "the prometheus package holds no usr/bin/promtool"
}

start_kafka() {
  if listening "$KAFKA_PORT"; then
    log "reusing the Kafka-protocol broker already listening on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  if [[ ! -x $TANSU_BIN ]]; then
    log "building Tansu $TANSU_VERSION from crates.io (about 12 minutes on 2 cores, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
      --root "$PREFIX/tansu-$TANSU_VERSION" >"$STATE/tansu-install.log" 2>&1 ||
      { tail -n 30 "$STATE/tansu-install.log" >&2; die "building Tansu failed"; }
  fi
  log "starting Tansu on 127.0.0.1:$KAFKA_PORT (in-memory storage)"
  nohup "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
  echo $! >"$STATE/tansu.pid"
  wait_for_port "$KAFKA_PORT" Tansu 30 "$STATE/tansu.log"
}

start_rabbitmq() {
  if listening "$RABBITMQ_PORT"; then
    log "reusing the RabbitMQ already listening on 127.0.0.1:$RABBITMQ_PORT"
    return
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  rabbitmq-server -detached
  touch "$STATE/rabbitmq.started-here"
  wait_for_port "$RABBITMQ_PORT" RabbitMQ 120
}

start_moto() {
  if listening "$MOTO_PORT"; then
    log "reusing the S3/STS server already listening on 127.0.0.1:$MOTO_PORT"
    return
  fi
  if [[ ! -x $MOTO_VENV/bin/moto_server ]]; then
    log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    local python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    "$python" -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
      die "installing moto failed"
  fi
  log "starting moto on 127.0.0.1:$MOTO_PORT"
  nohup "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  wait_for_port "$MOTO_PORT" moto 60 "$STATE/moto.log"
}

stop_pidfile() { # name pidfile
  if [[ -f $2 ]]; then
    local pid
    pid=$(cat "$2")
    if kill "$pid" 2>/dev/null; then
      log "stopped $1 (pid $pid)"
    fi
    rm -f "$2"
  fi
}

print_status() {
  local name port url
  while read -r name port url; do
    if listening "$port"; then
      printf '%-9s %-40s up\n' "$name" "$url"
    else
      printf '%-9s %-40s down\n' "$name" "$url"
    fi
  done <<EOF
kafka $KAFKA_PORT 127.0.0.1:$KAFKA_PORT
rabbitmq $RABBITMQ_PORT amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f
s3/sts $MOTO_PORT http://127.0.0.1:$MOTO_PORT
EOF
}

mkdir -p "$STATE" "$PREFIX"
case ${1:-start} in
  start)
    ensure_build_deps
    install_promtool
    start_kafka
    start_rabbitmq
    start_moto
    print_status
    ;;
  stop)
    stop_pidfile Tansu "$STATE/tansu.pid"
    stop_pidfile moto "$STATE/moto.pid"
    if [[ -f $STATE/rabbitmq.started-here ]]; then
      rabbitmqctl stop >/dev/null 2>&1 && log "stopped RabbitMQ"
      rm -f "$STATE/rabbitmq.started-here"
    fi
    ;;
  status) print_status ;;
  *) die "usage: $0 [start|stop|status]" ;;
esac
