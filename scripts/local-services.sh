#!/usr/bin/env bash
# Installs what is missing and starts what is not running, on 127.0.0.1, for the tests and the
# demo: Apache Kafka (one KRaft node), RabbitMQ, and the moto S3/STS server. Also installs the
# Debian packages the Rust build needs. Runs as root on Debian; safe to run again: services that
# already listen are reused, installed versions are kept.
#
#   scripts/local-services.sh [start|stop|status]
#   scripts/local-services.sh kafka-home     # prints where Kafka's jars are, installing them once
#   scripts/local-services.sh prometheus-bin # prints the Prometheus server's path (the demo runs it)
#
# Versions are pinned below. Kafka's jars come from Maven Central through Maven (which checks
# their checksums), moto from PyPI into its own virtualenv, the rest from Debian's signed archive.
set -euo pipefail

KAFKA_VERSION=4.1.1
# Kafka logs through SLF4J 1.7; this binds it to the log4j 2 that Kafka already depends on.
LOG4J_VERSION=2.24.3
MOTO_VERSION=5.2.5
PREFIX=${ACTIVITY_SERVICES_PREFIX:-/opt/activity-logs}
STATE=${ACTIVITY_SERVICES_STATE:-/var/lib/activity-logs}
KAFKA_PORT=${ACTIVITY_LOCAL_KAFKA_PORT:-9092}
RABBITMQ_PORT=5672
MOTO_PORT=${ACTIVITY_LOCAL_MOTO_PORT:-5000}
MOTO_TLS_PORT=${ACTIVITY_LOCAL_MOTO_TLS_PORT:-5443}

KAFKA_HOME="$PREFIX/kafka-$KAFKA_VERSION"
KAFKA_STATE="$STATE/kafka"
# A bounded heap: the tests run beside the Rust build on small machines.
KAFKA_HEAP=${ACTIVITY_LOCAL_KAFKA_HEAP:-512m}
MOTO_VENV="$PREFIX/moto-$MOTO_VERSION"
# A private CA and a certificate for localhost signed by it, made once: the S3/STS server's TLS
# port presents it, and clients trust ca.pem (ACTIVITY_AWS_CA_FILE for the services).
TLS_DIR="$STATE/tls"
BUILD_PACKAGES=(cmake g++ make libcurl4-openssl-dev libsasl2-dev libssl-dev zlib1g-dev libzstd-dev
  pkg-config python3-venv python3-yaml ca-certificates curl openssl socat openjdk-17-jre-headless maven)
# promtool, for the test that checks the Prometheus configuration and alert rules: unpacked from
# Debian's prometheus package, without installing (and starting) the server.
PROMETHEUS_DIR="$PREFIX/prometheus"
PROMTOOL_BIN="$PROMETHEUS_DIR/usr/bin/promtool"
PROMETHEUS_BIN="$PROMETHEUS_DIR/usr/bin/prometheus"

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

# Debian's prometheus package, unpacked (not installed: no service is started by it): the
# server the demo runs and the promtool the tests check the rules with.
install_prometheus() {
  [[ -x $PROMTOOL_BIN && -x $PROMETHEUS_BIN ]] && return 0
  log "unpacking Debian's prometheus package (server and promtool) into $PROMETHEUS_DIR"
  local download
  download=$(mktemp -d)
  if [[ -z $apt_updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  (cd "$download" && apt-get download -qq prometheus >/dev/null) || die "cannot download Debian's prometheus package"
  dpkg-deb -x "$download"/prometheus_*.deb "$PROMETHEUS_DIR"
  rm -rf "$download"
  [[ -x $PROMTOOL_BIN && -x $PROMETHEUS_BIN ]] ||
    die "the prometheus package holds no usr/bin/promtool and usr/bin/prometheus"
}

# Fetches the kafka_2.13 artifact and its runtime dependencies into $KAFKA_HOME/libs, once.
install_kafka() {
  [[ -f $KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar ]] && return 0
  log "fetching Apache Kafka $KAFKA_VERSION and its dependencies from Maven Central into $KAFKA_HOME (once)"
  local project
  project=$(mktemp -d)
  cat >"$project/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>activity-logs</groupId><artifactId>local-kafka</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$KAFKA_HOME.partial"
  (cd "$project" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_HOME.partial/libs") >"$STATE/kafka-install.log" 2>&1 ||
    { tail -n 30 "$STATE/kafka-install.log" >&2; die "fetching Kafka through Maven failed"; }
  cat >"$KAFKA_HOME.partial/log4j2.properties" <<'EOF'
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
EOF
  rm -rf "$KAFKA_HOME" "$project"
  mv "$KAFKA_HOME.partial" "$KAFKA_HOME"
}

KAFKA_JAVA=(java -Xms128m "-Xmx$KAFKA_HEAP" -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties"
  -cp "$KAFKA_HOME/libs/*")

start_kafka() {
  if listening "$KAFKA_PORT"; then
    log "reusing the Kafka broker already listening on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  install_kafka
  local controller_port=$((KAFKA_PORT + 1))
  mkdir -p "$KAFKA_STATE"
  # Settings for tests: consumer groups form at once, internal topics fit one node, and only the
  # services create topics (a typo in a topic name fails instead of making a new topic).
  cat >"$KAFKA_STATE/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_STATE/data
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
  if [[ ! -f $KAFKA_STATE/data/meta.properties ]]; then
    log "formatting Kafka's storage in $KAFKA_STATE/data"
    local cluster_id
    cluster_id=$("${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null)
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" \
      --config "$KAFKA_STATE/server.properties" >"$STATE/kafka-format.log" 2>&1 ||
      { tail -n 20 "$STATE/kafka-format.log" >&2; die "formatting Kafka's storage failed"; }
  fi
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (KRaft, data in $KAFKA_STATE/data)"
  : >"$STATE/kafka.log"
  nohup "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_STATE/server.properties" >>"$STATE/kafka.log" 2>&1 &
  echo $! >"$STATE/kafka.pid"
  # Kafka opens its client port before the broker has registered with the controller; it can
  # serve once it logs that it started. It loads every partition it holds first: about 10 ms a
  # partition here, so a broker holding thousands needs more than a minute.
  local deadline=$((SECONDS + 300))
  until grep -q 'Kafka Server started' "$STATE/kafka.log"; do
    if ! kill -0 "$(cat "$STATE/kafka.pid")" 2>/dev/null || ((SECONDS >= deadline)); then
      tail -n 30 "$STATE/kafka.log" >&2
      die "Kafka did not start within 300 s"
    fi
    sleep 0.2
  done
  wait_for_port "$KAFKA_PORT" Kafka 10 "$STATE/kafka.log"
}

# RabbitMQ 4 refuses messages over 16 MiB by default; Debian's 3.x takes 128 MiB. The local
# broker gets 4's limit, so the tests meet the limit users run with (it applies to channels
# opened from then on).
RABBITMQ_MAX_MESSAGE_BYTES=16777216

start_rabbitmq() {
  if listening "$RABBITMQ_PORT"; then
    log "reusing the RabbitMQ already listening on 127.0.0.1:$RABBITMQ_PORT"
  else
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    log "starting RabbitMQ"
    rabbitmq-server -detached
    touch "$STATE/rabbitmq.started-here"
    wait_for_port "$RABBITMQ_PORT" RabbitMQ 120
  fi
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl await_startup >/dev/null 2>&1 || true
    rabbitmqctl eval "application:set_env(rabbit, max_message_size, $RABBITMQ_MAX_MESSAGE_BYTES)." >/dev/null ||
      die "cannot set RabbitMQ's max_message_size"
  fi
}

# The launcher that adds AWS's trust-policy check to moto (see the file). A server this script
# started with another launcher (an older checkout's) is replaced: its state is in memory only,
# and tests rely on the check.
MOTO_LAUNCHER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/moto-server.py"

start_moto() {
  if listening "$MOTO_PORT"; then
    local cmdline=""
    [[ -f $STATE/moto.pid ]] && cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$(cat "$STATE/moto.pid")/cmdline" || true)
    if [[ $cmdline == *moto* && $cmdline != *--tls-port* ]]; then
      log "replacing the S3/STS server started without scripts/moto-server.py's TLS port"
      stop_pidfile moto "$STATE/moto.pid"
    else
      log "reusing the S3/STS server already listening on 127.0.0.1:$MOTO_PORT"
      return
    fi
  fi
  if [[ ! -x $MOTO_VENV/bin/moto_server ]]; then
    log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    local python=/usr/bin/python3
    [[ -x $python ]] || python=python3
    "$python" -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" ||
      die "installing moto failed"
  fi
  make_tls_certificates
  log "starting moto on 127.0.0.1:$MOTO_PORT and, over TLS, localhost:$MOTO_TLS_PORT"
  nohup "$MOTO_VENV/bin/python" "$MOTO_LAUNCHER" --host 127.0.0.1 --port "$MOTO_PORT" \
    --tls-port "$MOTO_TLS_PORT" --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" \
    >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  wait_for_port "$MOTO_PORT" moto 60 "$STATE/moto.log"
  wait_for_port "$MOTO_TLS_PORT" "moto (TLS)" 10 "$STATE/moto.log"
}

make_tls_certificates() {
  [[ -f $TLS_DIR/server.pem ]] && return 0
  log "making a private CA and a certificate for localhost in $TLS_DIR"
  rm -rf "$TLS_DIR.partial"
  mkdir -p "$TLS_DIR.partial"
  (
    cd "$TLS_DIR.partial"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=activity-logs local CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
      -days 3650 -extfile server.ext
  ) >"$STATE/tls.log" 2>&1 || { cat "$STATE/tls.log" >&2; die "making the TLS certificates failed"; }
  mv "$TLS_DIR.partial" "$TLS_DIR"
}

stop_pidfile() { # name pidfile
  if [[ -f $2 ]]; then
    local pid deadline=$((SECONDS + 60))
    pid=$(cat "$2")
    if kill "$pid" 2>/dev/null; then
      # Wait for the exit, so a start right after finds the port and the data directory free.
      while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
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
s3/sts $MOTO_TLS_PORT https://localhost:$MOTO_TLS_PORT (trust $TLS_DIR/ca.pem)
EOF
}

mkdir -p "$STATE" "$PREFIX"
case ${1:-start} in
  start)
    ensure_build_deps
    install_prometheus
    start_kafka
    start_rabbitmq
    start_moto
    print_status
    ;;
  stop)
    stop_pidfile Kafka "$STATE/kafka.pid"
    stop_pidfile moto "$STATE/moto.pid"
    if [[ -f $STATE/rabbitmq.started-here ]]; then
      rabbitmqctl stop >/dev/null 2>&1 && log "stopped RabbitMQ"
      rm -f "$STATE/rabbitmq.started-here"
    fi
    ;;
  status) print_status ;;
  kafka-home)
    ensure_build_deps
    install_kafka
    echo "$KAFKA_HOME"
    ;;
  prometheus-bin)
    install_prometheus
    echo "$PROMETHEUS_BIN"
    ;;
  *) die "usage: $0 [start|stop|status|kafka-home|prometheus-bin]" ;;
esac
