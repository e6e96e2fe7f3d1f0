#!/usr/bin/env bash
# The whole pipeline on this machine: starts the local services (Kafka protocol, RabbitMQ, S3/STS),
# builds and runs ingest (with its admin API), the batcher and the uploader, creates two customer
# buckets, connects two tenants through the admin API, streams realistic activity events, and
# prints every object as it lands in a bucket, with its event count and first event decoded.
#
#   scripts/demo.sh
#
# Windows are one minute long (ACTIVITY_DEMO_WINDOW), so the first objects arrive a minute or two
# after the tenants connect: the window before the connection and the connection's own window
# come as the first delivery, then one object per tenant per window. Ctrl-C stops what the demo
# started; the local services keep running (scripts/local-services.sh stop ends them).
#
# The batcher signs an hourly digest per tenant (here one per window, ACTIVITY_DEMO_WINDOW) with
# a key the demo makes; ACTIVITY_DEMO_OBJECTS=N stops by itself once each bucket holds N objects
# and two digests, then shows the public key the admin API serves and runs the customer's
# verifier on acme's bucket (CI runs it so); ACTIVITY_DEMO_TIMEOUT bounds that wait. Every run
# uses its own topics, queues, buckets and key, so running it twice is safe.
set -euo pipefail
cd "$(dirname "$0")/.."

window=${ACTIVITY_DEMO_WINDOW:-1m}
close_delay=${ACTIVITY_DEMO_CLOSE_DELAY:-5s}
until_objects=${ACTIVITY_DEMO_OBJECTS:-0}
timeout=${ACTIVITY_DEMO_TIMEOUT:-10m}
base_port=${ACTIVITY_DEMO_PORT:-18080}
# The services reach S3 and STS over TLS, as they reach AWS, trusting the local CA; the customer
# buckets' policy refuses anything else. IAM (the customer's administrator creating a role) uses
# the plain port.
aws_endpoint=https://localhost:${ACTIVITY_LOCAL_MOTO_TLS_PORT:-5443}
iam_endpoint=http://127.0.0.1:${ACTIVITY_LOCAL_MOTO_PORT:-5000}
ca_file=${ACTIVITY_SERVICES_STATE:-/var/lib/activity-logs}/tls/ca.pem

scripts/local-services.sh start
echo "== building the services"
cargo build --locked --quiet -p ingest -p batcher -p uploader -p integration-tests \
  -p verify --bin ingest --bin batcher --bin uploader --bin show-deliveries --bin provision-customer \
  --bin activity-logs-verify
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug

run="demo-$(date +%Y%m%d%H%M%S)-$RANDOM"
logs=$(mktemp -d -t activity-demo.XXXXXX)
# The S3/STS test server takes any credentials; the SDK must find some and must not wait for
# instance metadata.
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-demo} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-demo}
export AWS_EC2_METADATA_DISABLED=true
# One deployment: every service reads these.
export ACTIVITY_AWS_ENDPOINT_URL=$aws_endpoint ACTIVITY_AWS_CA_FILE=$ca_file ACTIVITY_AWS_REGION=us-east-1
export ACTIVITY_KAFKA_EVENTS_TOPIC=$run.events ACTIVITY_KAFKA_EVENTS_PARTITIONS=3
export ACTIVITY_KAFKA_INTEGRATIONS_TOPIC=$run.integrations
export ACTIVITY_KAFKA_DELIVERIES_TOPIC=$run.deliveries
export ACTIVITY_KAFKA_FIRST_DELIVERIES_TOPIC=$run.first-deliveries
export ACTIVITY_KAFKA_CHECKPOINTS_TOPIC=$run.checkpoints
export ACTIVITY_UPLOADS_NAME=$run.uploads ACTIVITY_RETRY_TIERS=5s,30s
export ACTIVITY_BATCHER_GROUP=$run.batcher ACTIVITY_BATCHER_SPILL_DIR=$logs/spill
export ACTIVITY_BATCHER_WINDOW=$window ACTIVITY_BATCHER_CLOSE_DELAY=$close_delay

# The vendor's digest signing key, made as an operator makes one, and its public half in the form
# the admin API serves (GET /v1/digest-keys) and the verifier reads. The key id is the first 8
# bytes of the SHA-256 of the raw 32-byte public key.
openssl genpkey -algorithm ed25519 -out "$logs/digest-signing-key.pem"
key_id=$(openssl pkey -in "$logs/digest-signing-key.pem" -pubout -outform DER | tail -c 32 |
  sha256sum | cut -c1-16)
public_pem=$(openssl pkey -in "$logs/digest-signing-key.pem" -pubout | awk '{printf "%s\\n", $0}')
printf '{"keys":[{"key_id":"%s","public_key_pem":"%s","valid_from":"%s","valid_until":null}]}\n' \
  "$key_id" "$public_pem" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$logs/digest-keys.json"
export ACTIVITY_DIGEST_PERIOD=$window ACTIVITY_DIGEST_GRACE=${ACTIVITY_DEMO_DIGEST_GRACE:-10s}
# The verifier checks the digests of periods from this hour on (the tenants connect below).
verify_from=$(date -u +%Y-%m-%dT%H:00:00Z)

events_token="events-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
admin_token="admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
ingest_url=http://127.0.0.1:$base_port

pids=()
stop_services() {
  trap - EXIT INT TERM
  [ -n "${events_pid:-}" ] && kill "$events_pid" 2>/dev/null || true
  if [ ${#pids[@]} -gt 0 ]; then
    echo "== stopping the services (SIGTERM)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  echo "== logs: $logs"
}
trap stop_services EXIT
trap 'exit 130' INT TERM

start() { # name, then the command
  local name=$1
  shift
  "$@" 2>"$logs/$name.log" &
  pids+=($!)
  echo "   $name: pid $!, log $logs/$name.log"
}
wait_ready() { # name, port
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$1 did not become ready; its log:" >&2
  tail -20 "$logs/$1.log" >&2
  exit 1
}

echo "== starting ingest (events and admin API), batcher and uploader; windows of $window"
ACTIVITY_INGEST_LISTEN=127.0.0.1:$base_port ACTIVITY_INGEST_TOKENS=$events_token \
  ACTIVITY_ADMIN_TOKENS=$admin_token \
  ACTIVITY_VENDOR_ROLE_ARN=arn:aws:iam::111122223333:role/ActivityLogDelivery \
  ACTIVITY_EXTERNAL_ID_SECRET="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" \
  ACTIVITY_DIGEST_PUBLIC_KEYS_FILE=$logs/digest-keys.json \
  start ingest "$bin/ingest"
wait_ready ingest "$base_port"
ACTIVITY_BATCHER_LISTEN=127.0.0.1:$((base_port + 1)) \
  ACTIVITY_DIGEST_SIGNING_KEY_FILE=$logs/digest-signing-key.pem start batcher "$bin/batcher"
ACTIVITY_UPLOADER_LISTEN=127.0.0.1:$((base_port + 2)) start uploader "$bin/uploader"
wait_ready batcher $((base_port + 1))
wait_ready uploader $((base_port + 2))

# Prometheus with the shipped scrape configuration and alert rules, pointed at this demo's three
# services, scraping and evaluating every 5 s so the demo's short windows show.
prometheus_port=$((base_port + 10))
prometheus_bin=$(scripts/local-services.sh prometheus-bin)
cp deploy/prometheus/alerts.yml "$logs/alerts.yml"
sed -e "s/\"ingest:8080\"/\"127.0.0.1:$base_port\"/" \
  -e "s/\"batcher:8081\"/\"127.0.0.1:$((base_port + 1))\"/" \
  -e "s/\"uploader:8082\"/\"127.0.0.1:$((base_port + 2))\"/" \
  -e 's/_interval: 15s/_interval: 5s/' deploy/prometheus/prometheus.yml >"$logs/prometheus.yml"
start prometheus "$prometheus_bin" --config.file="$logs/prometheus.yml" \
  --storage.tsdb.path="$logs/prometheus-data" --web.listen-address=127.0.0.1:$prometheus_port
for _ in $(seq 150); do
  curl -fsS "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null ||
  { tail -20 "$logs/prometheus.log" >&2; exit 1; }
prometheus_url=http://127.0.0.1:$prometheus_port
echo "== Prometheus: $prometheus_url (targets: $prometheus_url/targets, alerts: $prometheus_url/alerts)"
prometheus_query() { # PromQL; prints each series' labels and value
  curl -fsS "$prometheus_url/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys
for r in json.load(sys.stdin)["data"]["result"]:
    print("  ", r["metric"], r["value"][1])'
}

admin() { # method, path, [body]
  curl -sS -X "$1" -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"} -w '\n   -> HTTP %{http_code}\n' "$ingest_url$2"
}
settings() { # bucket, role ARN
  printf '{"aws_account_id":"123456789012","bucket":"%s","prefix":"activity-logs","role_arn":"%s","region":"us-east-1","compression":"zstd"}' "$1" "$2"
}

buckets=(acme-audit-$run globex-audit-$run)

echo "== what acme's admin is asked to create (GET /v1/integrations/s3/setup)"
admin GET "/v1/integrations/s3/setup?tenant=acme&bucket=${buckets[0]}&prefix=activity-logs" |
  head -c 700
echo " ..."
echo "== a mistyped setting is refused, naming the field, and nothing is saved"
admin PUT /v1/tenants/acme/integrations/s3 \
  "$(settings "Acme_Logs" arn:aws:iam::123456789012:role/ActivityLogWriter)"
for i in 0 1; do
  tenant=$([ $i = 0 ] && echo acme || echo globex)
  echo "== $tenant's administrator creates the bucket and the role as the setup guide says"
  role=$(ACTIVITY_ADMIN_TOKEN=$admin_token "$bin/provision-customer" --admin-url "$ingest_url" \
    --s3-endpoint "$aws_endpoint" --iam-endpoint "$iam_endpoint" --tenant "$tenant" \
    --bucket "${buckets[$i]}" --prefix activity-logs --role-name "ActivityLogWriter-$tenant-$run")
  echo "   s3://${buckets[$i]}: public access blocked, SSE-S3 with the bucket key, TLS-only policy"
  echo "   $role (trust policy: the vendor's role with $tenant's external id)"
  echo "== connecting $tenant to s3://${buckets[$i]}/activity-logs/ (connection test, then save)"
  admin PUT "/v1/tenants/$tenant/integrations/s3" "$(settings "${buckets[$i]}" "$role")"
done

# Realistic activity: device, blueprint, user and auth actions with actors and targets.
event() { # tenant, n
  local tenant=$1 n=$2 now id kind
  now=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
  id="$run-$tenant-$n"
  kind=$((n % 6))
  case $kind in
    0) printf '{"id":"%s","tenant_id":"%s","type":"device.lock","occurred_at":"%s","actor":{"type":"admin","email":"it@%s.example"},"target":{"type":"device","name":"MacBook Pro (Finance-%04d)","serial":"C02X%05dJGH5"},"details":{"reason":"reported lost"}}\n' "$id" "$tenant" "$now" "$tenant" $((n % 9000)) $((n % 90000)) ;;
    1) printf '{"id":"%s","tenant_id":"%s","type":"blueprint.update","occurred_at":"%s","actor":{"type":"admin","email":"it@%s.example"},"target":{"type":"blueprint","name":"Finance Laptops"},"details":{"changed":["filevault","firewall"]}}\n' "$id" "$tenant" "$now" "$tenant" ;;
    2) printf '{"id":"%s","tenant_id":"%s","type":"user.invite","occurred_at":"%s","actor":{"type":"admin","email":"root@%s.example"},"target":{"type":"user","email":"new.hire.%d@%s.example"},"details":{"role":"viewer"}}\n' "$id" "$tenant" "$now" "$tenant" "$n" "$tenant" ;;
    3) printf '{"id":"%s","tenant_id":"%s","type":"auth.login","occurred_at":"%s","actor":{"type":"user","email":"user.%d@%s.example","ip":"198.51.100.%d"},"details":{"method":"sso","mfa":true}}\n' "$id" "$tenant" "$now" $((n % 40)) "$tenant" $((n % 250)) ;;
    4) printf '{"id":"%s","tenant_id":"%s","type":"auth.login_failed","occurred_at":"%s","actor":{"type":"user","email":"user.%d@%s.example","ip":"203.0.113.%d"},"details":{"method":"password","reason":"bad_password"}}\n' "$id" "$tenant" "$now" $((n % 40)) "$tenant" $((n % 250)) ;;
    5) printf '{"id":"%s","tenant_id":"%s","type":"device.enroll","occurred_at":"%s","actor":{"type":"system","name":"automated-device-enrollment"},"target":{"type":"device","name":"iPad (Store-%03d)","serial":"DMPX%05dQ1GC"},"details":{"blueprint":"Retail iPads"}}\n' "$id" "$tenant" "$now" $((n % 500)) $((n % 90000)) ;;
  esac
}
stream_events() {
  local n=0
  while true; do
    # The batch is built in a subshell (the pipeline), so the counter moves on out here.
    for i in 0 1 2 3 4; do event acme $((n + i)); event globex $((n + i)); done |
      curl -sS -o /dev/null -H "Authorization: Bearer $events_token" \
        -H 'Content-Type: application/x-ndjson' --data-binary @- "$ingest_url/v1/events" || true
    n=$((n + 5))
    sleep 1
  done
}
echo "== streaming 10 events a second (two tenants) into POST /v1/events"
stream_events &
events_pid=$!

echo "== objects as they land (first delivery after the connection window closes, then one per window),"
echo "   and each tenant's signed digest of every period once its grace ($ACTIVITY_DIGEST_GRACE) has passed"
if [ "$until_objects" -gt 0 ]; then
  "$bin/show-deliveries" --endpoint "$aws_endpoint" --bucket "${buckets[0]}" --bucket "${buckets[1]}" \
    --until-objects "$until_objects" --until-digests 2 --timeout "$timeout"
  echo "== acme's integration and delivery status (GET /v1/tenants/acme/integrations/s3)"
  admin GET /v1/tenants/acme/integrations/s3
  echo "== the digests' public keys, as customers fetch them (GET /v1/digest-keys)"
  admin GET /v1/digest-keys
  echo "== what Prometheus sees ($prometheus_url): the services' targets (up), the p99 delivery lag"
  echo "   in seconds, firing alerts (none expected)"
  prometheus_query 'up{job=~"activity-.*"}'
  prometheus_query 'histogram_quantile(0.99, sum by (le) (rate(activity_uploader_delivery_lag_seconds_bucket[5m])))'
  prometheus_query 'ALERTS{alertstate="firing"}'
  echo "== acme's administrator checks the bucket with the verifier (their own credentials)"
  curl -sS -H "Authorization: Bearer $admin_token" "$ingest_url/v1/digest-keys" >"$logs/keys-as-served.json"
  "$bin/activity-logs-verify" --bucket "${buckets[0]}" \
    --prefix activity-logs --tenant acme --from "$verify_from" --public-keys "$logs/keys-as-served.json"
else
  echo "   (Ctrl-C to stop)"
  "$bin/show-deliveries" --endpoint "$aws_endpoint" --bucket "${buckets[0]}" --bucket "${buckets[1]}"
fi
