"""The Kafka clients: the plain aiokafka ones the web side needs beside Faust's own, and how
Faust's own consumer fetches.

Publisher: an idempotent acks=all producer, so a 2xx means the brokers have the message.
KafkaRecordSource: the hub's group-less consumer, assigned every partition of the chat topic.
MetadataProbe: whether any broker answers (for BrokerWatch and /readyz).
LogReader: group-less consumers that read a range of one partition (resume, history).
KchatTransport: Faust's own Kafka transport, with its consumer (the counting agents') fetching in
batches and its producer flushing everything before Faust commits offsets.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Mapping

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
from aiokafka.structs import ConsumerRecord, RecordMetadata
from faust.transport.drivers import aiokafka as faust_kafka

from .config import Settings
from .internals import fetch_all_metadata, set_fetch_batching
from .metrics import Metrics
from .models import partition_for

log = logging.getLogger(__name__)

# Faust's consumer feeds only the counting agents (the fan-out reads with its own consumer), so a
# count may trail by a fetch wait. With Faust's settings a fetch returns as soon as one record is
# there, and each batch costs a round of thread hand-offs, sensor calls and commits: at 100 msg/s a
# worker spent 80% of a core, and 39% once fetches waited for a batch (300 msg/s: 100% -> 79%).
COUNTING_FETCH_MIN_BYTES = 64 * 1024
COUNTING_FETCH_MAX_WAIT_MS = 100
# How long a stopping worker may wait on Kafka, all its steps together: with the brokers gone
# Faust would wait forever for its last events' commit (a SIGTERMed worker was still waiting
# after 20 minutes), aiokafka for every batch in flight. It must still stop within seconds.
STOP_BUDGET = 3.0


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """consumer.stop(), surviving aiokafka's own cancellation of its fetch requests.

    aiokafka (0.14) Fetcher.close() cancels the fetch requests still pending and awaits them
    without suppressing their CancelledError; with the brokers gone one is always pending, so
    stop() raises CancelledError although nobody cancelled us.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we really are being cancelled


class StopBudget:
    """One budget of seconds for every step of a worker's stop that waits on Kafka."""

    def __init__(self, seconds: float = STOP_BUDGET) -> None:
        self.seconds = seconds
        self.deadline: float | None = None

    def start(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds

    def left(self) -> float:
        self.start()
        return max(0.1, self.deadline - time.monotonic())

    async def within(self, what: str, stop) -> bool:
        """Await stop() for what is left of the budget; say so in one line if that was not enough."""
        try:
            async with asyncio.timeout(self.left()):
                await stop()
        except TimeoutError:
            pass
        # Faust's own code may swallow the cancellation and return: the clock tells either way.
        if time.monotonic() < self.deadline:
            return True
        log.warning("stopping: %s (brokers unreachable?); not waiting longer", what)
        return False


class _BatchingConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    async def on_thread_stop(self) -> None:
        # Faust stops its aiokafka consumer here. The CancelledError that aiokafka lets escape
        # (see stop_consumer) used to kill this thread before it signalled its shutdown, and the
        # worker then waited out mode's 60 s stop timeout, with the thread's traceback written to
        # the log one stderr write (often one character) per line.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def _create_worker_consumer(self, transport):  # a Faust internal, see internals.OVERRIDES
        consumer = super()._create_worker_consumer(transport)
        # Faust passes no fetch_min_bytes and a fixed fetch_max_wait_ms of 1.5 s.
        set_fetch_batching(consumer, COUNTING_FETCH_MIN_BYTES, COUNTING_FETCH_MAX_WAIT_MS)
        return consumer


class _BatchingConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> _BatchingConsumerThread:  # a Faust internal, see internals.OVERRIDES
        return _BatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_stop(self) -> None:
        # Faust waits here for the agents' last events and commits them: forever without brokers.
        # What is not committed is processed again on the next start (at-least-once).
        await self.app.stop_budget.within("the agents' last offsets could not be committed", super().on_stop)


class _FlushingProducer(faust_kafka.Producer):
    async def flush(self) -> None:
        if self.app.should_stop:
            # Faust flushes once more when the app stops. Whatever is not written by then was
            # never covered by a commit (see _drain), so it is counted again on the next start.
            await self.app.stop_budget.within("the counts' changelog writes could not be flushed", self._drain)
        else:
            await self._drain()

    async def _drain(self) -> None:
        # Faust flushes the producer before it commits offsets, but its buffer of table
        # changelog writes stops flushing after 0.1 s without progress, busy or not. A commit
        # could then cover a count whose changelog write was still queued, and a worker killed
        # at that moment lost the count for whoever restored the table from the changelog (the
        # likely cause of one count lost in a run of test_worker_crash). Drain it completely.
        while self.buffer.size:
            await self.buffer.flush()
        await super().flush()

    async def on_stop(self) -> None:
        # aiokafka's stop() waits for every batch in flight, up to Faust's 20-minute request timeout.
        await self.app.stop_budget.within("Faust's producer could not deliver what it still held", super().on_stop)


class KchatTransport(faust_kafka.Transport):
    Consumer = _BatchingConsumer
    Producer = _FlushingProducer


class KafkaUnavailable(Exception):
    """Kafka did not answer in time: a publish is unconfirmed, a read incomplete (503)."""


class Publisher(mode.Service):
    def __init__(self, settings: Settings, metrics: Metrics, stop_budget: StopBudget | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.stop_budget = stop_budget or StopBudget()
        self._producer: AIOKafkaProducer | None = None

    @property
    def connected(self) -> bool:
        return self._producer is not None

    @mode.Service.task
    async def _connect(self) -> None:
        # Brokers may come up after the worker: keep trying instead of crashing the worker.
        delay = 0.5
        while not self.should_stop:
            producer = AIOKafkaProducer(
                **self.settings.aiokafka_options(),
                client_id="kchat-publisher",
                acks="all",
                enable_idempotence=True,
                # No linger: a lone publish is sent at once. Under load batches form anyway, while
                # the previous produce request to the broker is in flight.
                linger_ms=0,
                request_timeout_ms=int(self.settings.publish_timeout * 1000),
            )
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                log.warning("publisher: brokers unreachable (%s); retrying in %.1fs", exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._producer = producer
            log.info("publisher: connected to %s", self.settings.bootstrap_servers)
            return

    async def on_stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # stop() flushes what is still buffered before closing. Their publishers have been
            # (or will be) answered 503, "not confirmed", if it cannot.
            await self.stop_budget.within("the publisher could not deliver the messages it still held",
                                          producer.stop)

    async def publish(self, room: str, value: bytes) -> RecordMetadata:
        began = time.perf_counter()
        topic = self.settings.topic
        meta = await self.send(topic, value, key=room.encode(), partition=self.partition_of(topic, room))
        self.metrics.publish_latency.observe(time.perf_counter() - began)
        return meta

    def partition_of(self, topic: str, room: str) -> int | None:
        """The room's partition, as the producer's partitioner would choose it, from models'
        cached partition_for (aiokafka's hashes the key in pure Python on every send); None while
        the topic's metadata is not known: then the producer chooses."""
        partitions = self._producer.client.cluster.partitions_for_topic(topic) if self._producer else None
        return partition_for(room, len(partitions)) if partitions else None

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   partition: int | None = None) -> RecordMetadata:
        """One record, acknowledged by the brokers (acks=all) within the publish timeout, or KafkaUnavailable."""
        if self._producer is None:
            raise KafkaUnavailable("not connected to the Kafka brokers yet")
        try:
            # asyncio.timeout, unlike wait_for, wraps nothing in a task of its own: it is on
            # the path of every publish.
            async with asyncio.timeout(self.settings.publish_timeout):
                meta = await self._producer.send_and_wait(topic, value, key=key, partition=partition)
        except TimeoutError:
            raise KafkaUnavailable(
                f"the brokers did not acknowledge within {self.settings.publish_timeout:g}s"
            ) from None
        except KafkaError as exc:
            raise KafkaUnavailable(f"the brokers refused the message ({exc.__class__.__name__})") from None
        return meta


class PresenceSender:
    """Sends presence records on the publisher's producer (acks=all), each within the publish timeout."""

    def __init__(self, publisher: "Publisher", topic: str) -> None:
        self.publisher, self.topic = publisher, topic

    async def __call__(self, value: bytes, key: bytes | None, partition: int | None) -> None:
        producer = self.publisher._producer
        if producer is None:
            raise KafkaUnavailable("not connected to the Kafka brokers yet")
        async with asyncio.timeout(self.publisher.settings.publish_timeout):
            await producer.send_and_wait(self.topic, value, key=key, partition=partition)


class BrokerRefused(Exception):
    """The brokers answer but refuse this worker's credentials or certificate: no retry can help."""


class MetadataProbe:
    """Asks any broker for the cluster's metadata, the cheapest question every broker answers:
    how BrokerWatch tells whether this worker can reach the brokers at all. A client of its
    own, so it works before Faust and the publisher have started (e.g. brokers down at start)."""

    def __init__(self, settings: Settings, timeout: float = 2.0) -> None:
        self.settings, self.timeout = settings, timeout
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> None:
        async with asyncio.timeout(self.timeout):
            if self._client is None:
                client = AIOKafkaClient(**self.settings.aiokafka_options(), client_id="kchat-probe",
                                        request_timeout_ms=int(self.timeout * 1000))
                try:
                    await client.bootstrap()
                except KafkaError:
                    await client.close()
                    await self._diagnose()
                    raise
                except BaseException:
                    await client.close()
                    raise
                self._client = client
            await self._client.fetch_all_metadata()

    async def _diagnose(self) -> None:
        """aiokafka's bootstrap says only "Unable to bootstrap": connect once more to tell a broker that
        refuses our credentials or certificate (BrokerRefused, naming the setting) from one that is down."""
        s = self.settings
        if s.security_protocol == "PLAINTEXT":
            return
        host, _, port = s.bootstrap_servers.split(",")[0].rpartition(":")
        options = s.aiokafka_options()
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=int(self.timeout * 1000),
                                     ssl_context=options.get("ssl_context"), security_protocol=s.security_protocol,
                                     sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                                     sasl_plain_password=s.sasl_password)
        except SaslAuthenticationFailed:
            raise BrokerRefused(f"the brokers refused KCHAT_KAFKA_SASL_USERNAME={s.sasl_username!r} with that "
                                f"KCHAT_KAFKA_SASL_PASSWORD ({s.sasl_mechanism})") from None
        except UnsupportedSaslMechanismError:
            raise BrokerRefused(f"the brokers do not offer KCHAT_KAFKA_SASL_MECHANISM={s.sasl_mechanism}") from None
        except ssl.SSLCertVerificationError as exc:
            raise BrokerRefused(f"KCHAT_KAFKA_SSL_CAFILE={s.ssl_cafile or '(the system CAs)'!r} does not trust "
                                f"the brokers' certificate ({exc.verify_message})") from None
        except ssl.SSLError as exc:
            raise BrokerRefused(f"TLS with the brokers failed ({exc.reason or exc}); check KCHAT_KAFKA_SECURITY_PROTOCOL "
                                "and KCHAT_KAFKA_SSL_CAFILE / _CERTFILE / _KEYFILE") from None
        except (OSError, asyncio.TimeoutError, KafkaError):
            return  # down or unreachable: worth retrying
        conn.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class KafkaRecordSource:
    """The hub's reader: a consumer in no group, assigned every partition of the chat topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self, positions: Mapping[int, int]) -> dict[int, int]:
        consumer = self._consumer = AIOKafkaConsumer(
            **self.settings.aiokafka_options(),
            client_id="kchat-fanout",
            group_id=None,  # no group: this worker is assigned every partition
            enable_auto_commit=False,
        )
        await consumer.start()
        topic = self.settings.topic
        while True:
            # A group-less consumer tracks no topic, so its own metadata cache never has ours.
            cluster = await fetch_all_metadata(consumer)
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                break
            log.info("fan-out reader: waiting for topic %r to exist", topic)
            await asyncio.sleep(1.0)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if positions:
            for tp in tps:
                consumer.seek(tp, positions.get(tp.partition, 0))
        else:
            await consumer.seek_to_end(*tps)
        return {tp.partition: await consumer.position(tp) for tp in tps}

    async def fetch(self, max_records: int) -> list[ConsumerRecord]:
        assert self._consumer is not None, "open() first"
        batches = await self._consumer.getmany(timeout_ms=500, max_records=max_records)
        return [record for records in batches.values() for record in records]

    def highwater(self, partition: int) -> int | None:
        if self._consumer is None:
            return None
        return self._consumer.highwater(TopicPartition(self.settings.topic, partition))

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)


class LogReader:
    """Reads offset ranges of the chat topic with a small pool of group-less consumers."""

    def __init__(self, settings: Settings, pool_size: int = 4) -> None:
        self.settings = settings
        self._idle: list[AIOKafkaConsumer] = []
        self._slots = asyncio.Semaphore(pool_size)

    @asynccontextmanager
    async def _consumer(self) -> AsyncIterator[AIOKafkaConsumer]:
        async with self._slots:
            consumer = self._idle.pop() if self._idle else None
            if consumer is None:
                consumer = AIOKafkaConsumer(
                    **self.settings.aiokafka_options(),
                    client_id="kchat-reader",
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                )
                await consumer.start()
            ok = False
            try:
                yield consumer
                ok = True
            finally:
                if ok:
                    self._idle.append(consumer)
                else:
                    await stop_consumer(consumer)

    async def close(self) -> None:  # the pooled consumers
        while self._idle:
            await stop_consumer(self._idle.pop())

    async def end_offset(self, partition: int, topic: str | None = None) -> int:
        tp = TopicPartition(topic or self.settings.topic, partition)
        async with self._consumer() as consumer:
            return (await consumer.end_offsets([tp]))[tp]

    async def bounds(self, partition: int) -> tuple[int, int]:
        tp = TopicPartition(self.settings.topic, partition)
        async with self._consumer() as consumer:
            begin = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
        return begin, end

    async def offset_at(self, partition: int, timestamp_ms: int) -> int:
        tp = TopicPartition(self.settings.topic, partition)
        async with self._consumer() as consumer:
            found = (await consumer.offsets_for_times({tp: max(0, timestamp_ms)}))[tp]
            if found is None:  # nothing that recent: the end
                return (await consumer.end_offsets([tp]))[tp]
        return found.offset

    async def read(self, partition: int, start: int, stop: int, timeout: float = 30.0,
                   topic: str | None = None) -> AsyncIterator[ConsumerRecord]:
        """Records with start <= offset < stop (of the chat topic unless another is named); from the
        log start if start is gone."""
        if start >= stop:
            return
        tp = TopicPartition(topic or self.settings.topic, partition)
        deadline = time.monotonic() + timeout
        async with self._consumer() as consumer:
            consumer.assign([tp])
            consumer.seek(tp, start)
            while await consumer.position(tp) < stop:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"reading partition {partition} did not finish within {timeout:g}s")
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
                for record in batch.get(tp, ()):
                    if record.offset >= stop:
                        return
                    yield record
