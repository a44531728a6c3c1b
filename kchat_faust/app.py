"""The kchat Faust app: declarations first, then the flows.

    chatroom (keyed by room) --> route_by_user --> chatroom-by-user (keyed by user)
                                                      --> count_messages --> table user_counts
    chatroom --> Hub (every worker, every partition) --> SSE subscribers
    HTTP POST --> Publisher (idempotent, acks=all) --> chatroom
"""
from __future__ import annotations

import logging

import faust

from . import metrics
from .config import ConfigError, Settings
from .fanout import Hub
from .kafka_io import KchatTransport, LogReader, Publisher
from .models import decode_record

try:
    settings = Settings.from_env()
except ConfigError as exc:
    # A setting that cannot work stops the worker with one line, not a traceback.
    raise SystemExit(f"kchat: {exc}") from None
log = logging.getLogger("kchat")


class KchatApp(faust.App):
    """faust.App on KchatTransport: Faust's Kafka clients with two fixes (see kafka_io)."""

    def _new_transport(self) -> KchatTransport:
        return KchatTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> KchatTransport:
        return KchatTransport(self.conf.broker_producer, self)


app = KchatApp(
    "kchat",
    broker=settings.broker,
    broker_credentials=settings.faust_credentials(),
    store="rocksdb://",
    datadir=settings.datadir,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    producer_acks=-1,
    # Other workers reach this one at this address to gather /stats/users.
    web_host=settings.advertised_host,
    web_application_options={"client_max_size": settings.max_body},
    # Counting must see the whole log, also the part written before the first worker ran.
    consumer_auto_offset_reset="earliest",
    # A topic Faust has just created may be missing from the consumer's first metadata; the
    # group would then ignore it until the next refresh (5 minutes by default), and nothing
    # would be counted. Refresh often enough that a new topic joins the assignment at once.
    consumer_metadata_max_age_ms=5000,
    logging_config=settings.logging_config(),
)

_topic_config = {"min.insync.replicas": str(settings.min_insync_replicas)}

# internal=True makes Faust create the topic with these settings when it is missing:
# brokers run with auto.create.topics.enable=false, so nothing else may create it.
chat_topic = app.topic(
    settings.topic,
    key_serializer="raw",
    value_serializer="raw",  # decoded by decode_record, which also accepts plain text lines
    partitions=settings.partitions,
    replicas=settings.replication_factor,
    internal=True,
    config=_topic_config,
)


class Counted(faust.Record, serializer="json", include_metadata=False):
    """A message's author and its place in chatroom: the place makes counting idempotent."""

    user: str
    partition: int
    offset: int


by_user_topic = app.topic(
    f"{settings.topic}-by-user",
    key_type=str,
    value_type=Counted,
    partitions=settings.partitions,
    replicas=settings.replication_factor,
    internal=True,
    config=_topic_config,
)

# value: {"count": n, "seen": {"<chatroom partition>": last counted offset}}
user_counts = app.Table(
    "user_counts",
    default=None,
    partitions=settings.partitions,
    # rocksdict's defaults reserve GiBs of block cache per partition; counts are tiny.
    options={"block_cache_size": 8 << 20, "write_buffer_size": 4 << 20,
             "max_write_buffer_number": 2},
)

class LocalCounts:
    """This worker's share of user_counts as plain ints, for GET /stats/users.

    Reading the table means iterating RocksDB and decoding a JSON value per user: fine once
    per rebalance, too slow per request with 100k users. Rebuilt lazily after any change
    of assignment, kept current by count_messages in between.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] | None = None

    def snapshot(self) -> dict[str, int]:
        if self.counts is None:
            self.counts = {user: state["count"] for user, state in user_counts.items() if state}
        return self.counts

    def set(self, user: str, count: int) -> None:
        if self.counts is not None:
            self.counts[user] = count

    def invalidate(self) -> None:
        self.counts = None


local_counts = LocalCounts()
publisher = Publisher(settings)
reader = LogReader(settings)
hub = Hub(settings, reader)
app.service(publisher)
app.service(hub)


@app.agent(chat_topic)
async def route_by_user(stream):
    # Regroup by user so the table is co-partitioned with the stream that updates it.
    async for event in stream.events():
        m = event.message
        msg = decode_record(event.value, m.partition, m.offset, int(m.timestamp * 1000),
                            settings.default_room)
        if msg is not None:
            await by_user_topic.send(key=msg.user,
                                     value=Counted(user=msg.user, partition=m.partition, offset=m.offset))


@app.agent(by_user_topic)
async def count_messages(stream):
    # At-least-once delivery replays records after a crash or rebalance; the per-partition
    # high-water mark kept with the count turns each replay into a no-op.
    async for counted in stream:
        state = user_counts.get(counted.user) or {"count": 0, "seen": {}}
        key = str(counted.partition)
        if counted.offset <= state["seen"].get(key, -1):
            continue
        user_counts[counted.user] = {"count": state["count"] + 1,
                                     "seen": {**state["seen"], key: counted.offset}}
        local_counts.set(counted.user, state["count"] + 1)


@app.on_partitions_revoked.connect
async def _forget_counts_on_revoke(app, *args, **kwargs) -> None:
    local_counts.invalidate()


@app.on_partitions_assigned.connect
async def _forget_counts_on_assign(app, *args, **kwargs) -> None:
    local_counts.invalidate()


@user_counts.on_recover
async def _forget_counts_on_recover() -> None:
    local_counts.invalidate()  # the table may have changed under the snapshot


@app.task
async def announce_config() -> None:
    log.info("kchat worker config: %s", settings.summary())


def ready() -> dict[str, bool]:
    recovery = app.tables.recovery
    return {
        "producer": publisher.connected,
        "fanout": hub.ready,
        "tables": recovery.completed.is_set() and not recovery.in_recovery,
    }


metrics.install(app, hub, ready)

from . import openapi, page, views  # noqa: E402,F401  (registers the web pages on app)
