#!/usr/bin/env bash
# A local Apache Kafka (KRaft, no ZooKeeper) for the tests, the benchmarks and `presenced demo
# --brokers`: the broker and its runtime dependencies come from Maven Central (kafka/pom.xml pins
# the version) and run on the machine's Java 17.
#
#   scripts/kafka.sh fetch                 download the broker's jars (cached; about 55 MB once)
#   scripts/kafka.sh start DIR [NODES]     start 1 (default) or 3 combined broker+controller nodes
#                                          on 127.0.0.1; waits until every node serves; writes DIR/env
#   scripts/kafka.sh kill-node DIR ID      SIGKILL one node (failover tests)
#   scripts/kafka.sh stop-node DIR ID      SIGTERM one node and wait for it to exit
#   scripts/kafka.sh start-node DIR ID...  start stopped nodes again and wait until they serve (a
#                                          node waits for a quorum, so a cluster restarts together)
#   scripts/kafka.sh stop DIR              stop every node (SIGTERM, then SIGKILL) and keep DIR
#
# Each node has four listeners: PLAINTEXT (clients and brokers), SASL_SSL with SCRAM-SHA-512
# (a CA and a broker certificate made with openssl at start, a user made with Kafka's own storage
# tool), CONTROLLER, and PROXIED: plaintext on a port of its own but advertised at another port
# that nobody listens on, where a test runs a TCP forwarder that it can cut (one client cut off
# from the cluster while the others are not). DIR/env holds what clients need, as shell
# assignments:
#   KAFKA_BOOTSTRAP       PLAINTEXT addresses, comma-separated
#   KAFKA_SASL_BOOTSTRAP  SASL_SSL addresses
#   KAFKA_CA              the CA certificate (PEM) that signed the brokers' certificates
#   KAFKA_SCRAM_USER, KAFKA_SCRAM_PASSWORD
#   KAFKA_PROXIED_BOOTSTRAP  PROXIED's advertised addresses (the forwarder's)
#   KAFKA_PROXIED         what the forwarder joins: ADVERTISED_PORT=LISTENING_PORT, comma-separated
#   KAFKA_NODES           the node ids
#   KAFKA_VERSION
# Environment: KAFKA_HEAP (default -Xmx400m), PRESENCED_KAFKA_CACHE (default ~/.cache/presenced).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
pom="$here/kafka/pom.xml"
version=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' "$pom")
cache="${PRESENCED_KAFKA_CACHE:-$HOME/.cache/presenced}/kafka-$version"
libs="$cache/libs"

log() { printf '==> kafka: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: %s\n' "$*" >&2; exit 1; }

fetch() {
  if [ -f "$libs/.complete" ] && [ "$(cat "$libs/.complete")" = "$(sha256sum <"$pom")" ]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Apache Kafka"
  command -v java >/dev/null || die "Java 17 or newer is needed to run Apache Kafka"
  log "fetching Apache Kafka $version and its dependencies from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs"
  sha256sum <"$pom" >"$libs/.complete"
}

classpath() { ls "$libs"/*.jar | tr '\n' ':'; }

# COUNT free TCP ports on 127.0.0.1, one a line. They are drawn below the kernel's ephemeral range
# (ip_local_port_range), so a connection the nodes open while starting cannot take a port that a
# node has yet to bind; all are held together while drawn, so none repeats.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
held = []
while len(held) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, low)))
    except OSError:
        s.close()
        continue
    held.append(s)
print("\n".join(str(s.getsockname()[1]) for s in held))
PY
}

# A CA, and one certificate for every node (all on 127.0.0.1), in PEM as KIP-651 reads them.
make_certificates() {
  local dir=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=presenced test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/broker.key" -out "$dir/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 30 -extfile "$dir/san.ext" -out "$dir/broker.crt" 2>/dev/null
  # The keystore: the private key (PKCS#8, unencrypted) followed by the certificate chain.
  cat "$dir/broker.key" "$dir/broker.crt" "$dir/ca.pem" >"$dir/broker-keystore.pem"
  chmod 600 "$dir"/*.key "$dir/broker-keystore.pem"
}

write_node_config() {
  local dir=$1 id=$2 voters=$3 nodes=$4
  local node="$dir/node$id"
  mkdir -p "$node/data"
  local plain sasl ctrl proxied proxy
  plain=$(cat "$node/port.plain") sasl=$(cat "$node/port.sasl") ctrl=$(cat "$node/port.controller")
  proxied=$(cat "$node/port.proxied") proxy=$(cat "$node/port.proxy")
  local replicas=$nodes min_isr=1
  [ "$nodes" -ge 3 ] && { replicas=3; min_isr=2; }
  cat >"$node/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
# A node gives up and exits when the quorum has not registered it within this (60 s by default);
# on two cores busy building the tests, a three-node quorum can take longer to form.
initial.broker.registration.timeout.ms=600000
listeners=PLAINTEXT://127.0.0.1:$plain,SASL_SSL://127.0.0.1:$sasl,CONTROLLER://127.0.0.1:$ctrl,PROXIED://127.0.0.1:$proxied
advertised.listeners=PLAINTEXT://127.0.0.1:$plain,SASL_SSL://127.0.0.1:$sasl,PROXIED://127.0.0.1:$proxy
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT
log.dirs=$node/data
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$dir/broker-keystore.pem
num.partitions=3
default.replication.factor=$replicas
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Small and quick: two cores are shared with the tests and the other nodes.
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.threads=1
log.cleaner.backoff.ms=500
log.cleaner.dedupe.buffer.size=8388608
# A node that comes back is leader again soon, so failover tests move leadership both ways.
leader.imbalance.check.interval.seconds=5
EOF
  cat >"$node/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $node/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

java_opts() {
  local node=$1
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several options
  echo ${KAFKA_HEAP:--Xmx400m -Xms128m} -XX:+UseSerialGC -XX:CICompilerCount=2 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$node/log4j2.properties"
}

start_node() {
  local dir=$1 id=$2
  local node="$dir/node$id"
  [ -d "$node" ] || die "no node $id in $dir"
  if [ -f "$node/pid" ] && kill -0 "$(cat "$node/pid")" 2>/dev/null; then
    die "node $id is running already"
  fi
  # shellcheck disable=SC2046
  nohup java $(java_opts "$node") -cp "$(classpath)" kafka.Kafka "$node/server.properties" \
    >>"$node/stdout.log" 2>&1 </dev/null &
  echo $! >"$node/pid"
}

# Waits until node ID logged that it started, after the log grew past BEFORE lines.
wait_node() {
  local dir=$1 id=$2 before=$3
  local node="$dir/node$id"
  for _ in $(seq 1 3000); do
    # One reader, no pipe: with pipefail, `tail | grep -q` fails when grep stops reading early.
    if [ -f "$node/broker.log" ] &&
      awk -v n="$before" 'NR > n && /Kafka Server started/ { found = 1; exit } END { exit !found }' \
        "$node/broker.log"; then
      return
    fi
    kill -0 "$(cat "$node/pid")" 2>/dev/null || {
      # Why it stopped is in its first errors, not in the shutdown at the log's end.
      printf 'kafka.sh: node %s exited during start; its errors:\n' "$id" >&2
      grep -E -m 20 ' (ERROR|FATAL) |Exception' "$node/broker.log" >&2 2>/dev/null || true
      tail -n 20 "$node/stdout.log" >&2 2>/dev/null || true
      return 1
    }
    sleep 0.1
  done
  printf 'kafka.sh: node %s did not start within 300 s (log: %s/broker.log)\n' "$id" "$node" >&2
  return 1
}

log_lines() { [ -f "$1/broker.log" ] && wc -l <"$1/broker.log" || echo 0; }

# Draws ports, writes each node's configuration, formats its storage and starts it; fails when a
# node does not come up.
launch_nodes() {
  local dir=$1 ids=$2 nodes=$3 password=$4
  local voters="" id ports cluster_id
  read -r -a ports <<<"$(free_ports $((5 * nodes)) | tr '\n' ' ')"
  for id in $ids; do
    mkdir -p "$dir/node$id"
    echo "${ports[5 * (id - 1)]}" >"$dir/node$id/port.plain"
    echo "${ports[5 * (id - 1) + 1]}" >"$dir/node$id/port.sasl"
    echo "${ports[5 * (id - 1) + 2]}" >"$dir/node$id/port.controller"
    echo "${ports[5 * (id - 1) + 3]}" >"$dir/node$id/port.proxied"
    echo "${ports[5 * (id - 1) + 4]}" >"$dir/node$id/port.proxy"
    voters="${voters:+$voters,}$id@127.0.0.1:$(cat "$dir/node$id/port.controller")"
  done
  cluster_id=$(java -cp "$(classpath)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  for id in $ids; do
    write_node_config "$dir" "$id" "$voters" "$nodes"
    java -cp "$(classpath)" kafka.tools.StorageTool format --config "$dir/node$id/server.properties" \
      --cluster-id "$cluster_id" --add-scram "SCRAM-SHA-512=[name=presenced,password=$password]" \
      >"$dir/node$id/format.log" 2>&1 || { cat "$dir/node$id/format.log" >&2; die "formatting node $id failed"; }
  done
  for id in $ids; do start_node "$dir" "$id"; done
  for id in $ids; do wait_node "$dir" "$id" 0 || return 1; done
}

start_cluster() {
  local dir=$1 nodes=${2:-1}
  [ "$nodes" = 1 ] || [ "$nodes" = 3 ] || die "NODES is 1 or 3, not $nodes"
  command -v openssl >/dev/null || die "openssl is needed for the SASL_SSL listener's certificates"
  fetch
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  make_certificates "$dir"
  local ids password attempt
  ids=$(seq -s ' ' 1 "$nodes")
  password=$(openssl rand -hex 16)
  # A node that fails to start (a port taken meanwhile, a quorum too slow on a loaded machine) is
  # not the test's failure: the nodes start again on new ports with fresh data, twice at most.
  for attempt in 1 2 3; do
    launch_nodes "$dir" "$ids" "$nodes" "$password" && break
    local id
    for id in $ids; do signal_node "$dir" "$id" KILL; done
    [ "$attempt" = 3 ] && die "the nodes did not start in three attempts (logs: $dir/attempt*)"
    log "the nodes did not start (attempt $attempt); starting them again on new ports"
    mkdir -p "$dir/attempt$attempt"
    for id in $ids; do mv "$dir/node$id" "$dir/attempt$attempt/"; done
  done
  local plain="" sasl="" proxy="" proxied=""
  for id in $ids; do
    plain="${plain:+$plain,}127.0.0.1:$(cat "$dir/node$id/port.plain")"
    sasl="${sasl:+$sasl,}127.0.0.1:$(cat "$dir/node$id/port.sasl")"
    proxy="${proxy:+$proxy,}127.0.0.1:$(cat "$dir/node$id/port.proxy")"
    proxied="${proxied:+$proxied,}$(cat "$dir/node$id/port.proxy")=$(cat "$dir/node$id/port.proxied")"
  done
  cat >"$dir/env" <<EOF
KAFKA_BOOTSTRAP=$plain
KAFKA_SASL_BOOTSTRAP=$sasl
KAFKA_CA=$dir/ca.pem
KAFKA_PROXIED_BOOTSTRAP=$proxy
KAFKA_PROXIED=$proxied
KAFKA_SCRAM_USER=presenced
KAFKA_SCRAM_PASSWORD=$password
KAFKA_NODES="$ids"
KAFKA_VERSION=$version
EOF
  chmod 600 "$dir/env"
  log "Apache Kafka $version: $nodes node(s) ready, PLAINTEXT $plain, SASL_SSL $sasl"
}

signal_node() {
  local dir=$1 id=$2 sig=$3
  local pidfile="$dir/node$id/pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

stop_cluster() {
  local dir=$1 node
  for node in "$dir"/node*; do
    [ -d "$node" ] && signal_node "$dir" "${node##*/node}" TERM &
  done
  wait
}

cmd=${1:-}
case "$cmd" in
  fetch) fetch ;;
  start) [ $# -ge 2 ] || die "usage: start DIR [NODES]"; start_cluster "$2" "${3:-1}" ;;
  kill-node) [ $# -eq 3 ] || die "usage: kill-node DIR ID"; signal_node "$2" "$3" KILL ;;
  stop-node) [ $# -eq 3 ] || die "usage: stop-node DIR ID"; signal_node "$2" "$3" TERM ;;
  start-node)
    [ $# -ge 3 ] || die "usage: start-node DIR ID..."
    dir=$2; shift 2
    declare -A before
    for id in "$@"; do before[$id]=$(log_lines "$dir/node$id"); start_node "$dir" "$id"; done
    for id in "$@"; do wait_node "$dir" "$id" "${before[$id]}" || die "node $id did not start"; done
    ;;
  stop) [ $# -eq 2 ] || die "usage: stop DIR"; stop_cluster "$2" ;;
  *) sed -n '2,29p' "$0" >&2; exit 2 ;;
esac
