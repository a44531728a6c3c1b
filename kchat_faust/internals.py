"""Every private part of faust-streaming and aiokafka that kchat relies on, named in one place.

The version pins in pyproject.toml keep these from moving under us; tests/test_internals.py checks
each one against the installed libraries, so that an upgrade that moves one fails there, by name,
instead of quietly misbehaving in production (a count lost, a worker that never stops).
Written against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0.

Two kinds:
- functions that stand in for a private attribute: callers use them, never the private name;
- private methods kchat's subclasses override (no function can stand in for an override): listed
  in OVERRIDES with the parameters the override expects, and checked to exist with them.

mode-streaming has none: kchat's services use only its public Service API. Library behaviour kchat
works around through public calls (kafka_io.stop_consumer, the stop budget, brokers.py's log
patterns) is not listed here; those have tests of their own.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping
from weakref import ref

from aiokafka import AIOKafkaConsumer
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import PartitionMetadata
from aiohttp.web_runner import AppRunner
from faust import streams
from faust.sensors.prometheus import PrometheusMonitor
from faust.types import TP


# -- aiokafka -----------------------------------------------------------------------------------

def set_fetch_batching(consumer: AIOKafkaConsumer, min_bytes: int, max_wait_ms: int) -> None:
    """Make a consumer that is not started yet fetch in batches: each fetch waits for min_bytes,
    or max_wait_ms.

    AIOKafkaConsumer._fetch_min_bytes and ._fetch_max_wait_ms hold the constructor's values until
    start() hands them to its Fetcher. Faust builds its worker consumer itself, with no
    fetch_min_bytes and a fixed fetch_max_wait_ms (see kafka_io): only these let us change them.
    Without them the counting agents take a fetch per record, several times the CPU at load.
    """
    consumer._fetch_min_bytes = min_bytes
    consumer._fetch_max_wait_ms = max_wait_ms


async def fetch_all_metadata(consumer: AIOKafkaConsumer) -> ClusterMetadata:
    """The whole cluster's metadata, asked of the brokers now.

    A consumer in no group tracks no topic, so its own metadata cache (the public
    partitions_for_topic) never knows ours; its AIOKafkaClient, AIOKafkaConsumer._client, can ask
    for all topics. Without it the fan-out reader (kafka_io.KafkaRecordSource) and the testkit's
    log reader cannot find the chat topic's partitions.
    """
    return await consumer._client.fetch_all_metadata()


def topic_partitions(cluster: ClusterMetadata, topic: str) -> Mapping[int, PartitionMetadata]:
    """Each partition of topic with its leader, replicas and ISR ({} for a topic it does not know).

    ClusterMetadata answers only leaders and partition ids publicly; the replicas and ISRs are in
    ClusterMetadata._partitions (topic -> partition -> PartitionMetadata). The testkit's faults
    need them to pick which broker to stop.
    """
    return cluster._partitions.get(topic, {})


# -- faust: the consumer, streams and the web server --------------------------------------------

def committed_offset(consumer, topic: str, partition: int) -> int | None:
    """Where Faust's consumer resumed topic's partition after its last assignment (None: not known).

    faust.transport.consumer.Consumer._committed_offset, a defaultdict(lambda: None) keyed by TP,
    filled from the group's committed offsets when partitions are assigned, and on each commit.
    The agents' in-order guards (inorder.py) compare each record's offset with it to tell a
    replay after a rebalance from a skipped record; without it a skipped record goes unnoticed.
    """
    return consumer._committed_offset.get(TP(topic, partition))


@contextmanager
def event_context(event) -> Iterator[None]:
    """Make event the one being processed, while the block runs.

    Faust puts a table write into the partition of the current event (faust.current_event()),
    which its streams keep in the context variable faust.streams._current_event, as a weak
    reference. A batch taken with take_events has no current event; without lending one each
    table write of the counting agents fails ("Cannot modify table key from outside of stream
    iteration").
    """
    token = streams._current_event.set(ref(event))
    try:
        yield
    finally:
        streams._current_event.reset(token)


def use_web_runner(web, runner: AppRunner) -> None:
    """Serve Faust's web server (faust.web.drivers.aiohttp.Web) through runner instead of its own.

    Faust builds its aiohttp AppRunner in Web.__init__ and keeps it in Web._runner, which
    start_server() sets up and stop_server() cleans up; its options cannot be set otherwise.
    Without this kchat's runner (handler_cancellation, see web.py) is not the one serving.
    """
    web._runner = runner


# -- faust: the Prometheus sensor ---------------------------------------------------------------

# PrometheusMonitor's hooks that metrics.KchatMonitor replaces: it runs Faust's own Monitor part
# (monitor_base) and its own series code instead of PrometheusMonitor's.
PROMETHEUS_HOOKS_REPLACED = ("on_message_in", "on_stream_event_in", "on_table_get", "on_table_set",
                             "on_table_del", "on_send_initiated", "on_web_request_end", "on_tp_commit",
                             "track_tp_end_offset")


def monitor_base(monitor: PrometheusMonitor):
    """monitor as the class PrometheusMonitor extends (Faust's Monitor), to call its hooks past
    PrometheusMonitor's own.

    Monitor's hooks keep the figures Faust's web views and commands read; PrometheusMonitor's add
    the Prometheus series, looking each labelled child up again on every call. KchatMonitor does
    that part itself, once per child; the MRO step is the internal: if PrometheusMonitor stops
    extending Monitor directly, this skips a class that was not meant.
    """
    return super(PrometheusMonitor, monitor)


def stream_label(monitor: PrometheusMonitor, stream) -> str:
    """The label PrometheusMonitor gives a stream's series (PrometheusMonitor._stream_label).
    KchatMonitor keeps the series per stream; without Faust's own labelling its series would be
    named otherwise than Faust's."""
    return monitor._stream_label(stream)


# -- private methods overridden -------------------------------------------------------------------

@dataclass(frozen=True)
class Override:
    owner: str  # the library class, "module:Class"
    name: str
    params: tuple[str, ...]  # the parameters the override is called with, self first
    coroutine: bool
    overridden_by: str  # kchat's class, "module:Class"
    why: str


OVERRIDES = (
    Override("faust.app.base:App", "_new_transport", ("self",), False, "kchat_faust.app:KchatApp",
             "builds the consumer's transport: kchat's KchatTransport (batching consumer, flushing producer)"),
    Override("faust.app.base:App", "_new_producer_transport", ("self",), False, "kchat_faust.app:KchatApp",
             "builds the producer's transport: KchatTransport too"),
    Override("faust.app.base:App", "_new_web", ("self",), False, "kchat_faust.app:KchatApp",
             "builds the web server: web.KchatWeb (JSON errors, event streams closed on stop)"),
    Override("faust.app.base:App", "_stop_consumer", ("self",), True, "kchat_faust.app:KchatApp",
             "waits for the agents' last events on stop: within the stop budget, not forever without brokers"),
    Override("faust.transport.drivers.aiokafka:Consumer", "_new_consumer_thread", ("self",), False,
             "kchat_faust.kafka_io:_BatchingConsumer",
             "builds the thread that owns the aiokafka consumer: kchat's, see the next"),
    Override("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_create_worker_consumer",
             ("self", "transport"), False, "kchat_faust.kafka_io:_BatchingConsumerThread",
             "builds the worker's aiokafka consumer: the one place to set its fetch batching"),
    Override("faust.sensors.prometheus:PrometheusMonitor", "_clear_partition_related_metrics", ("self",), False,
             "kchat_faust.metrics:KchatMonitor",
             "called on each rebalance to drop per-partition series: KchatMonitor forgets its kept children"),
)
