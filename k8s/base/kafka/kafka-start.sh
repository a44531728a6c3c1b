#!/usr/bin/env bash
# Starts one node of the kchat Kafka cluster: a broker (StatefulSet `kafka`) or a KRaft
# controller (StatefulSet `kafka-controller`). Mounted from ConfigMap `broker-config`.
#
# 1. Fills the role's properties template (broker.properties / controller.properties) with this
#    pod's values: node.id (from the pod ordinal), listeners and the advertised listener
#    (the pod's stable DNS name under its headless Service), the controller quorum voters, log.dirs.
# 2. Formats the storage on the first start (cluster id from the ConfigMap).
# 3. Execs Kafka.
#
# Every value can be overridden through the environment, so the same script renders properties
# for a local cluster on 127.0.0.1 (tests/test_k8s.py does):
#   KAFKA_ROLE                   broker | controller (required)
#   KAFKA_POD_NAME               pod name, <statefulset>-<ordinal> (default: $HOSTNAME)
#   KAFKA_ORDINAL                pod ordinal (default: the pod name's numeric suffix)
#   KAFKA_NODE_ID                node.id (default: ordinal for brokers, KAFKA_CONTROLLER_ID_BASE + ordinal
#                                for controllers)
#   KAFKA_CONTROLLER_ID_BASE     first controller node id (default 100: brokers keep the ids 0-3 of the seed)
#   KAFKA_NAMESPACE              namespace of the DNS names (default kafka)
#   KAFKA_CLUSTER_DOMAIN         cluster DNS domain (default cluster.local)
#   KAFKA_SERVICE                headless Service of this node (default broker | kafka-controller)
#   KAFKA_ADVERTISED_HOST        host name advertised (default <pod>.<service>.<namespace>.svc.<domain>)
#   KAFKA_LISTEN_HOST            address to bind (default empty: every interface)
#   KAFKA_PORT                   this node's port (default 9092 for brokers, KAFKA_CONTROLLER_PORT for controllers)
#   KAFKA_CONTROLLER_STATEFULSET controllers' StatefulSet (default kafka-controller)
#   KAFKA_CONTROLLER_SERVICE     controllers' headless Service (default kafka-controller)
#   KAFKA_CONTROLLER_REPLICAS    number of controllers (default 3)
#   KAFKA_CONTROLLER_PORT        controllers' port (default 9093)
#   KAFKA_QUORUM_VOTERS          controller.quorum.voters (default built from the five settings above)
#   KAFKA_LOG_DIRS               log.dirs (default /var/lib/kafka/data/kraft, a directory inside the volume)
#   KAFKA_CONFIG_DIR             where the templates are (default: this script's directory)
#   KAFKA_PROPERTIES_TEMPLATE    template (default $KAFKA_CONFIG_DIR/<role>.properties)
#   KAFKA_EXTRA_PROPERTIES       lines appended to the properties (later keys win)
#   KAFKA_PROPERTIES_OUT         where the properties are written (default ${TMPDIR:-/tmp}/server.properties)
#   KAFKA_RENDER_ONLY            true: write the properties, print their path and exit (no format, no Kafka)
#   KAFKA_CLUSTER_ID             cluster id used to format the storage (required unless KAFKA_RENDER_ONLY)
#   KAFKA_HOME                   Kafka installation (default /opt/kafka)
set -euo pipefail

die() { echo "kafka-start: $*" >&2; exit 1; }
is_number() { [[ $1 =~ ^[0-9]+$ ]]; }

role="${KAFKA_ROLE:-}"
pod="${KAFKA_POD_NAME:-${HOSTNAME:-}}"
ordinal="${KAFKA_ORDINAL:-${pod##*-}}"
namespace="${KAFKA_NAMESPACE:-kafka}"
domain="${KAFKA_CLUSTER_DOMAIN:-cluster.local}"
controller_statefulset="${KAFKA_CONTROLLER_STATEFULSET:-kafka-controller}"
controller_service="${KAFKA_CONTROLLER_SERVICE:-kafka-controller}"
controller_replicas="${KAFKA_CONTROLLER_REPLICAS:-3}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
controller_id_base="${KAFKA_CONTROLLER_ID_BASE:-100}"

is_number "$ordinal" || die "cannot tell the pod ordinal from pod name '$pod' (set KAFKA_ORDINAL)"
is_number "$controller_replicas" || die "KAFKA_CONTROLLER_REPLICAS must be a number"
is_number "$controller_id_base" || die "KAFKA_CONTROLLER_ID_BASE must be a number"

case "$role" in
  broker)
    service="${KAFKA_SERVICE:-broker}"
    port="${KAFKA_PORT:-9092}"
    node_id="${KAFKA_NODE_ID:-$((10#$ordinal))}"
    ;;
  controller)
    service="${KAFKA_SERVICE:-$controller_service}"
    port="${KAFKA_PORT:-$controller_port}"
    node_id="${KAFKA_NODE_ID:-$((controller_id_base + 10#$ordinal))}"
    ;;
  *) die "KAFKA_ROLE must be broker or controller, not '$role'" ;;
esac
is_number "$node_id" || die "node id '$node_id' is not a number"

advertised_host="${KAFKA_ADVERTISED_HOST:-$pod.$service.$namespace.svc.$domain}"
listen_host="${KAFKA_LISTEN_HOST:-}"

voters="${KAFKA_QUORUM_VOTERS:-}"
if [ -z "$voters" ]; then
  for ((i = 0; i < controller_replicas; i++)); do
    voter="$((controller_id_base + i))@$controller_statefulset-$i.$controller_service.$namespace.svc.$domain:$controller_port"
    voters="${voters:+$voters,}$voter"
  done
fi

log_dirs="${KAFKA_LOG_DIRS:-/var/lib/kafka/data/kraft}"
config_dir="${KAFKA_CONFIG_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
template="${KAFKA_PROPERTIES_TEMPLATE:-$config_dir/$role.properties}"
out="${KAFKA_PROPERTIES_OUT:-${TMPDIR:-/tmp}/server.properties}"
[ -r "$template" ] || die "no properties template at $template"

# The values go through sed's replacement text: escape what sed treats specially there.
sed_value() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

mkdir -p "$(dirname "$out")"
{
  sed -e "s|@NODE_ID@|$(sed_value "$node_id")|g" \
      -e "s|@LISTEN_HOST@|$(sed_value "$listen_host")|g" \
      -e "s|@ADVERTISED_HOST@|$(sed_value "$advertised_host")|g" \
      -e "s|@PORT@|$(sed_value "$port")|g" \
      -e "s|@QUORUM_VOTERS@|$(sed_value "$voters")|g" \
      -e "s|@LOG_DIRS@|$(sed_value "$log_dirs")|g" \
      "$template"
  if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
    printf '\n# From KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES"
  fi
} > "$out.tmp"
mv "$out.tmp" "$out"
if grep -q '@[A-Z_]*@' "$out"; then
  die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | sort -u | tr '\n' ' ')"
fi

if [ "${KAFKA_RENDER_ONLY:-false}" = true ]; then
  echo "$out"
  exit 0
fi

cluster_id="${KAFKA_CLUSTER_ID:-}"
[ -n "$cluster_id" ] || die "KAFKA_CLUSTER_ID is not set (key cluster.id of ConfigMap broker-config)"
kafka_home="${KAFKA_HOME:-/opt/kafka}"

echo "kafka-start: $role node.id=$node_id advertised=$advertised_host:$port voters=$voters"
first_log_dir="${log_dirs%%,*}"
if [ ! -f "$first_log_dir/meta.properties" ]; then
  echo "kafka-start: first start, formatting $log_dirs for cluster $cluster_id"
  "$kafka_home/bin/kafka-storage.sh" format --cluster-id "$cluster_id" --config "$out" --ignore-formatted
fi
exec "$kafka_home/bin/kafka-server-start.sh" "$out"
