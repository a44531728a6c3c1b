"""The kchat Faust app, built in one place: create_app() wires settings, topics, the counting
agents and table, the services and the web pages.

    HTTP POST --> Publisher (idempotent, acks=all) --> chatroom
    chatroom --> Hub (every worker, every partition) --> SSE subscribers
    chatroom --> counting agents --> tables user_counts, room_activity, room_index, idempotency_keys
    PUT .../read --> chatroom-reads --> track_reads --> table read_positions --> /api/users/{user}/unread
    event streams --> chatroom-presence --> presence agent --> table presence, join/leave --> chatroom

`faust -A kchat_faust worker` builds it from the environment (kchat_faust/__init__.py).
Everything a view needs hangs off the app object: app.settings, app.publisher, app.hub,
app.brokers, app.counts, app.rooms, app.room_index, app.keys, app.reads, app.sessions, app.presence_table, app.metrics, app.rate_limiter.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import faust

from . import counting, keys, metrics, presence, reads, roomindex, rooms, web
from .brokers import BrokerWatch
from .config import Settings
from .hub import Hub
from .kafka_io import (BrokerRefused, KafkaRecordSource, KchatTransport, LogReader, MetadataProbe, PresenceSender,
                       Publisher, StopBudget)
from .ratelimit import RateLimiter

log = logging.getLogger("kchat")


class KchatApp(faust.App):
    """faust.App on KchatTransport (Faust's Kafka clients with two fixes, see kafka_io) and
    KchatWeb (see web), carrying the services the views use."""

    settings: Settings
    metrics: metrics.Metrics
    publisher: Publisher
    hub: Hub
    brokers: BrokerWatch
    counts: counting.LocalCounts
    rooms: rooms.LocalRooms
    room_index: roomindex.LocalIndex
    keys: keys.LocalKeys
    reads: reads.LocalReads
    sessions: presence.Sessions
    presence_table: object
    rate_limiter: RateLimiter
    stop_budget: StopBudget

    # _new_transport, _new_producer_transport, _new_web and _stop_consumer are Faust internals:
    # see internals.OVERRIDES.
    def _new_transport(self) -> KchatTransport:
        return KchatTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> KchatTransport:
        return KchatTransport(self.conf.broker_producer, self)

    def _new_web(self) -> web.KchatWeb:
        return web.KchatWeb(self)

    def raw_topic(self, name: str, **config: str) -> faust.TopicT:
        """A topic of raw bytes, laid out like the chat topic (partitions, replicas, min ISR; plus
        config). internal=True makes Faust create it with these settings when it is missing: the
        brokers run with auto.create.topics.enable=false, so nothing else may create it."""
        s = self.settings
        return self.topic(name, key_serializer="raw", value_serializer="raw", partitions=s.partitions,
                          replicas=s.replication_factor, internal=True,
                          config={"min.insync.replicas": str(s.min_insync_replicas), **config})

    def small_table(self, name: str):
        """A RocksDB table of small JSON values, co-partitioned with the chat topic. rocksdict's defaults
        reserve GiBs of block cache per partition; counts, windows and offsets are tiny."""
        return self.Table(name, default=None, partitions=self.settings.partitions,
                          options={"block_cache_size": 8 << 20, "write_buffer_size": 4 << 20,
                                   "max_write_buffer_number": 2})

    def on_reassigned(self, forget: Callable[[], None], table=None) -> None:
        """forget() whenever what this worker holds may change: a rebalance, or the table's recovery."""
        async def receiver(*args, **kwargs) -> None:
            forget()

        self.on_partitions_revoked.connect(receiver)
        self.on_partitions_assigned.connect(receiver)
        if table is not None:
            table.on_recover(receiver)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        timeout = self.settings.startup_timeout
        try:
            reachable = await self.brokers.wait_until_reachable(timeout, refused=(BrokerRefused,))
        except BrokerRefused as exc:
            raise SystemExit(f"kchat: {exc}") from None
        if not reachable:
            # One line, as for a bad setting: what it waited for, and where.
            raise SystemExit(f"kchat: no Kafka broker answered within {timeout:g}s "
                             f"(KCHAT_BROKER={self.settings.broker}, KCHAT_STARTUP_TIMEOUT)")

    async def on_stop(self) -> None:
        self.stop_budget.start()
        await super().on_stop()

    async def _stop_consumer(self) -> None:
        # Faust waits for the agents' in-flight events, and their commit: forever without brokers.
        await self.stop_budget.within("the agents' last events could not be finished", super()._stop_consumer)

    def on_init_dependencies(self):
        # The broker watch first: its log gate must be on before Faust's clients start retrying,
        # and with the brokers down at start the app's own services never start (they wait for
        # table recovery).
        return [self.brokers, *super().on_init_dependencies()]

    def presence_online(self) -> dict[str, int]:
        """Named users online per room, in the rooms whose presence this worker holds."""
        return {room: len(listed["users"]) for room, listed in presence.listings(self.presence_table)}

    def readiness(self) -> dict[str, bool]:
        recovery = self.tables.recovery
        return {
            "brokers": self.brokers.reachable,
            "producer": self.publisher.connected,
            "fanout": self.hub.ready,
            "tables": recovery.completed.is_set() and not recovery.in_recovery,
        }


# The Faust settings the KCHAT_* ones set, reported at startup.
FAUST_REPORTED = ("broker", "datadir", "topic_partitions", "topic_replication_factor", "producer_acks",
                  "broker_session_timeout", "broker_heartbeat_interval", "web_host")


def faust_names_set(environ=None) -> list[str]:
    """The environment variables named like Faust's settings that are set (and so ignored)."""
    env = os.environ if environ is None else environ
    names = {p.env_name for p in faust.Settings.SETTINGS.values() if p.env_name} | {"APP_ENV_PREFIX"}
    return sorted(n for n in names if n in env)


def create_app(settings: Settings | None = None) -> KchatApp:
    """The app for these settings (default: from the environment; raises ConfigError)."""
    settings = settings if settings is not None else Settings.from_env()
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
        # How long a dead worker's partitions wait before the group gives them to the others;
        # the brokers accept 6 s to 30 min (group.min/max.session.timeout.ms).
        broker_session_timeout=settings.group_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.group_session_timeout / 3),
        logging_config=settings.logging_config(),
        # mode turns each write to stderr into a log line of its own: a traceback printed there
        # came out one line (often one character) per record. Let stderr be stderr.
        worker_redirect_stdouts=False,
        # Faust reads its own names (BROKER_URL, APP_DATADIR, BROKER_SESSION_TIMEOUT, ...) from the
        # environment and lets them beat these arguments: a stray one would silently override a
        # KCHAT_* setting. An empty environment leaves the KCHAT_* settings the only source.
        env={},
    )
    app.settings = settings
    app.stop_budget = StopBudget()
    app.metrics = metrics.Metrics()
    app.rate_limiter = RateLimiter(settings.rate_limit, settings.rate_burst)

    chat_topic = app.raw_topic(settings.topic)  # decoded by decode_record, which also accepts text lines
    app.rooms = rooms.setup(app)
    app.room_index = roomindex.setup(app)

    def on_messages(room: str, partition: int, messages: list[tuple[int, int]]) -> None:
        app.rooms.tally(room, partition, messages)
        app.room_index.add(room, partition, messages)

    app.keys = keys.setup(app)
    app.reads = reads.setup(app)
    app.counts = counting.setup(app, chat_topic, on_messages=on_messages, on_progress=app.room_index.progress,
                                on_keyed=app.keys.add, on_posted=app.reads.mark)
    app.presence_table = presence.setup(app, chat_topic)
    app.publisher = app.service(Publisher(settings, app.metrics, app.stop_budget))
    app.sessions = app.service(presence.Sessions(
        PresenceSender(app.publisher, f"{settings.topic}-presence"), settings.partitions,
        heartbeat=settings.presence_timeout / presence.HEARTBEATS_PER_TIMEOUT, stop_wait=app.stop_budget.left))
    app.hub = app.service(Hub(settings, KafkaRecordSource(settings), LogReader(settings), app.metrics))
    probe = MetadataProbe(settings)
    app.brokers = BrokerWatch(probe, close=probe.close)
    web.setup(app)
    metrics.install(app)

    ignored = faust_names_set()

    @app.task
    async def announce_config() -> None:
        log.info("kchat worker config: %s", settings.summary())
        # What Faust runs with, read back from its settings: the KCHAT_* values, whatever else is set.
        log.info("kchat faust settings: %s", {name: str(getattr(app.conf, name)) for name in FAUST_REPORTED})
        if ignored:
            log.warning("kchat ignores Faust's environment variables %s: it reads KCHAT_* only", ", ".join(ignored))

    return app
