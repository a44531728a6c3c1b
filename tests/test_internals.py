"""Each private part of faust-streaming and aiokafka named in kchat_faust/internals.py, checked against the
installed libraries: a new version that moves one fails here, with its name, before it misbehaves in a worker.

Real library objects, built without a broker (a consumer never started, an app never run)."""
from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import inspect
import pkgutil
import tempfile
import textwrap
from collections.abc import MutableMapping
from contextvars import ContextVar
from pathlib import Path

import faust
import faust.streams
import faust.tables.base
import pytest
from aiohttp.web_runner import AppRunner
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer import consumer as aiokafka_consumer
from aiokafka.protocol.metadata import MetadataResponse_v0
from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.web.drivers import aiohttp as faust_aiohttp
from prometheus_client import CollectorRegistry

import kchat_faust
import kchat_testkit
from kchat_faust import internals
from kchat_faust.config import Settings

LIBRARIES = ("faust", "mode", "aiokafka")


def _class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _app(**options) -> faust.App:
    return faust.App("internals-test", broker="kafka://127.0.0.1:1", **options)


# -- aiokafka -----------------------------------------------------------------------------------------------

async def test_a_consumer_keeps_its_fetch_settings_until_start_hands_them_to_its_fetcher(monkeypatch):
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_min_bytes=3, fetch_max_wait_ms=4)
    for name, value in (("_fetch_min_bytes", 3), ("_fetch_max_wait_ms", 4)):
        assert getattr(consumer, name, None) == value, (
            f"aiokafka's AIOKafkaConsumer no longer keeps its constructor's value in {name}: "
            "internals.set_fetch_batching changes nothing")
    internals.set_fetch_batching(consumer, 64 * 1024, 100)

    handed = {}

    class Stop(Exception):
        pass

    def fetcher(*args, **kwargs):
        handed.update(kwargs)
        raise Stop

    async def no_broker() -> None:
        return None

    assert hasattr(aiokafka_consumer, "Fetcher"), "aiokafka's consumer module no longer builds a Fetcher: re-check " \
                                                  "how AIOKafkaConsumer.start() passes its fetch settings"
    monkeypatch.setattr(aiokafka_consumer, "Fetcher", fetcher)
    monkeypatch.setattr(consumer._client, "bootstrap", no_broker)
    try:
        with pytest.raises(Stop):
            await consumer.start()
    finally:
        await consumer.stop()
    assert (handed.get("fetch_min_bytes"), handed.get("fetch_max_wait_ms")) == (64 * 1024, 100), (
        "AIOKafkaConsumer.start() no longer hands _fetch_min_bytes/_fetch_max_wait_ms to its Fetcher: "
        f"internals.set_fetch_batching changes nothing (the Fetcher got {handed})")


async def test_a_consumer_has_a_client_that_fetches_all_metadata():
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    try:
        client = getattr(consumer, "_client", None)
        assert isinstance(client, AIOKafkaClient), (
            f"AIOKafkaConsumer._client is {client!r}, no AIOKafkaClient: internals.fetch_all_metadata breaks")
        assert inspect.iscoroutinefunction(AIOKafkaClient.fetch_all_metadata) and \
            _params(AIOKafkaClient.fetch_all_metadata) == ["self"], (
            "AIOKafkaClient.fetch_all_metadata is no longer a coroutine taking no arguments: "
            "internals.fetch_all_metadata breaks")
    finally:
        await consumer.stop()


def test_cluster_metadata_keeps_each_partitions_metadata_by_topic():
    cluster = ClusterMetadata()
    cluster.update_metadata(MetadataResponse_v0(
        brokers=[(1, "b1", 9092), (2, "b2", 9092)],
        topics=[(0, "chatroom", [(0, 0, 1, [1, 2], [1]), (0, 1, 2, [2, 1], [2, 1])])]))
    assert hasattr(cluster, "_partitions"), "aiokafka's ClusterMetadata has no _partitions: " \
                                            "internals.topic_partitions breaks"
    found = internals.topic_partitions(cluster, "chatroom")
    assert {p: (m.leader, list(m.replicas), list(m.isr)) for p, m in found.items()} == {
        0: (1, [1, 2], [1]), 1: (2, [2, 1], [2, 1])}, f"ClusterMetadata._partitions changed shape: {found!r}"
    assert internals.topic_partitions(cluster, "elsewhere") == {}


# -- faust: the consumer, streams and the web server --------------------------------------------------------

async def test_fausts_consumer_keeps_the_offsets_it_resumed_from():
    consumer = _app().consumer  # Faust's own aiokafka Consumer, never started
    committed = getattr(consumer, "_committed_offset", None)
    assert isinstance(committed, MutableMapping), (
        f"faust's Consumer._committed_offset is {committed!r}, no mapping: internals.committed_offset breaks")
    assert internals.committed_offset(consumer, "chatroom", 0) is None

    async def seek_to_committed():
        return {faust.types.TP("chatroom", 0): 41}

    consumer.seek_to_committed = seek_to_committed  # what the group has committed
    await consumer.perform_seek()  # what Faust does on each assignment
    assert internals.committed_offset(consumer, "chatroom", 0) == 41, (
        "faust's Consumer no longer records where it resumed in _committed_offset: the agents' in-order "
        "guards (inorder.py) would not tell a replay from a skipped record")
    assert internals.committed_offset(consumer, "chatroom", 1) is None


def test_a_lent_event_is_the_current_one_for_faust_tables():
    assert isinstance(getattr(faust.streams, "_current_event", None), ContextVar), (
        "faust.streams._current_event is no ContextVar: internals.event_context lends no event")
    assert faust.tables.base.current_event is faust.streams.current_event, (
        "Faust's tables no longer find the current event with faust.streams.current_event: "
        "internals.event_context may not reach their writes")

    class Event:
        pass

    event, before = Event(), faust.current_event()
    with internals.event_context(event):
        assert faust.current_event() is event, "faust.current_event() does not see the event lent by " \
                                               "internals.event_context"
    assert faust.current_event() is before


async def test_fausts_web_server_serves_through_the_runner_it_is_given():
    with tempfile.TemporaryDirectory() as tmp:  # short: a unix socket's path is limited to ~100 bytes
        web = faust_aiohttp.Web(_app(web_transport=f"unix://{tmp}/web.sock"))
        own = getattr(web, "_runner", None)
        assert isinstance(own, AppRunner) and own.app is web.web_app, (
            f"faust's Web keeps no AppRunner of its web_app in _runner ({own!r}): internals.use_web_runner "
            "changes nothing")
        runner = AppRunner(web.web_app, handler_cancellation=True)
        internals.use_web_runner(web, runner)
        await web.start_server()
        try:
            assert runner.server is not None and len(runner.sites) == 1, (
                "faust's Web.start_server() did not serve through Web._runner: internals.use_web_runner "
                "changes nothing")
        finally:
            await web.stop_server()
        assert runner.server is None, "faust's Web.stop_server() did not clean up Web._runner"


# -- faust: the Prometheus sensor ---------------------------------------------------------------------------

def _monitor(cls=PrometheusMonitor):
    return cls(FaustMetrics.create(CollectorRegistry(), "faust"))


def test_prometheus_monitor_extends_fausts_monitor_directly():
    assert PrometheusMonitor.__bases__ == (Monitor,), (
        f"PrometheusMonitor now extends {PrometheusMonitor.__bases__}, not Monitor alone: internals.monitor_base "
        "skips more (or less) than PrometheusMonitor's own series code")
    monitor = _monitor()
    assert internals.monitor_base(monitor).on_table_get.__func__ is Monitor.on_table_get


@pytest.mark.parametrize("hook", internals.PROMETHEUS_HOOKS_REPLACED)
def test_each_replaced_prometheus_hook_is_prometheus_monitors_over_monitors(hook):
    from kchat_faust.metrics import KchatMonitor

    assert hook in vars(PrometheusMonitor), f"PrometheusMonitor no longer defines {hook}: KchatMonitor's " \
                                            "replacement may drop what it now does elsewhere"
    assert callable(vars(Monitor).get(hook)), f"faust's Monitor no longer defines {hook}: monitor_base(...).{hook} " \
                                              "fails"
    expected = _params(getattr(Monitor, hook))
    assert _params(getattr(PrometheusMonitor, hook)) == expected == _params(getattr(KchatMonitor, hook)), (
        f"{hook} takes other parameters in Monitor, PrometheusMonitor or KchatMonitor")


def test_kchat_monitor_replaces_exactly_the_hooks_named():
    from kchat_faust.metrics import KchatMonitor

    replaced = {name for name, member in vars(KchatMonitor).items()
                if inspect.isfunction(member) and not name.startswith("_") and name in vars(PrometheusMonitor)}
    assert replaced == set(internals.PROMETHEUS_HOOKS_REPLACED)


def test_prometheus_monitor_labels_streams():
    method = getattr(PrometheusMonitor, "_stream_label", None)
    assert method is not None and _params(method) == ["self", "stream"], (
        "PrometheusMonitor._stream_label(stream) is gone or changed: internals.stream_label breaks")

    class Stream:
        shortlabel = "Stream: Topic: chatroom"

    label = internals.stream_label(_monitor(), Stream())
    assert isinstance(label, str) and "chatroom" in label, f"PrometheusMonitor._stream_label gave {label!r}"


def test_prometheus_monitor_clears_partition_series_on_every_rebalance():
    cleared = []

    class Recording(PrometheusMonitor):
        def _clear_partition_related_metrics(self) -> None:
            cleared.append(True)
            super()._clear_partition_related_metrics()

    class App:
        rebalancing_count = 0

    monitor = _monitor(Recording)
    state = monitor.on_rebalance_start(App())
    assert cleared, "PrometheusMonitor.on_rebalance_start no longer calls _clear_partition_related_metrics: " \
                    "KchatMonitor would keep series Faust removed"
    cleared.clear()
    monitor.on_rebalance_end(App(), state)
    assert cleared, "PrometheusMonitor.on_rebalance_end no longer calls _clear_partition_related_metrics"


# -- private methods overridden -----------------------------------------------------------------------------

@pytest.mark.parametrize("override", internals.OVERRIDES, ids=lambda o: o.name)
def test_each_overridden_private_method_is_still_the_librarys(override):
    owner, ours = _class(override.owner), _class(override.overridden_by)
    method = getattr(owner, override.name, None)
    assert callable(method), (f"{override.owner} no longer has {override.name}: {override.overridden_by}'s "
                              f"override is never called ({override.why})")
    assert tuple(_params(method)) == override.params, (
        f"{override.owner}.{override.name} now takes {_params(method)}, not {list(override.params)} "
        f"({override.why})")
    assert inspect.iscoroutinefunction(method) == override.coroutine, (
        f"{override.owner}.{override.name} is {'no longer' if override.coroutine else 'now'} a coroutine")
    assert override.name in vars(ours) and tuple(_params(vars(ours)[override.name])) == override.params, (
        f"{override.overridden_by} no longer overrides {override.name} as internals.OVERRIDES says")


def test_faust_builds_its_transports_and_web_through_the_apps_overrides():
    from kchat_faust.app import create_app
    from kchat_faust.kafka_io import KchatTransport
    from kchat_faust.web import KchatWeb

    app = create_app(Settings())
    assert isinstance(app.transport, KchatTransport) and isinstance(app.producer_transport, KchatTransport), (
        "faust.App no longer builds its transports with _new_transport/_new_producer_transport: KchatApp's "
        "overrides are not called (no fetch batching, no full flush before a commit)")
    assert isinstance(app.web, KchatWeb), "faust.App no longer builds its web server with _new_web: KchatApp's " \
                                          "override is not called"


async def test_faust_builds_the_worker_consumer_through_the_batching_override():
    from kchat_faust.app import create_app
    from kchat_faust.kafka_io import COUNTING_FETCH_MAX_WAIT_MS, COUNTING_FETCH_MIN_BYTES

    app = create_app(Settings())
    thread = app.consumer._new_consumer_thread()
    consumer = thread._create_consumer(loop=asyncio.get_running_loop())  # as Faust does when the thread starts
    try:
        assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (
            COUNTING_FETCH_MIN_BYTES, COUNTING_FETCH_MAX_WAIT_MS), (
            "Faust's consumer thread no longer builds its worker consumer with _create_worker_consumer")
    finally:
        await consumer.stop()


def _our_subclasses_of_the_libraries():
    for info in pkgutil.iter_modules(kchat_faust.__path__):
        module = importlib.import_module(f"kchat_faust.{info.name}")
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__:
                bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in LIBRARIES]
                if bases:
                    yield cls, bases


@functools.cache
def _private_attributes_set(cls: type) -> frozenset[str]:
    """The names cls's own code assigns as self._name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source to read (built in, generated)
        return frozenset()
    return frozenset(node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                     and isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr.startswith("_")
                     and not node.attr.startswith("__") and isinstance(node.ctx, ast.Store))


# Set on every subclass by abc and by mode's Service (which collects the @Service.task methods).
MACHINERY = {"_abc_impl", "_tasks"}


def _shadowed(cls: type, bases: list[type]) -> list[str]:
    """cls's private names (methods, or attributes set on self) that a library base class has too,
    unless internals.OVERRIDES names them."""
    named = {(o.owner, o.name) for o in internals.OVERRIDES}
    ours = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")} | _private_attributes_set(cls)
    found = []
    for name in sorted(ours - MACHINERY):
        owners = [f"{b.__module__}:{b.__qualname__}" for b in bases
                  if name in vars(b) or name in vars(b).get("__annotations__", {}) or name in _private_attributes_set(b)]
        if owners and not named & {(owner, name) for owner in owners}:
            found.append(f"{cls.__module__}.{cls.__qualname__}.{name} (also {', '.join(owners)})")
    return found


def test_no_class_of_ours_shadows_a_private_name_of_the_libraries_unless_named():
    # A library version that adds a private name one of our subclasses also uses would have ours
    # silently replace it.
    shadowed = [line for cls, bases in _our_subclasses_of_the_libraries() for line in _shadowed(cls, bases)]
    assert shadowed == [], "private names of the libraries that our classes replace, not in internals.OVERRIDES:\n" \
                           + "\n".join(shadowed)


def test_the_shadow_check_sees_a_shadowed_name():
    class Shadowing(faust_aiohttp.Web):
        def __init__(self, app) -> None:
            self._runner = None  # Faust's own, replaced without internals.use_web_runner

        def _create_site(self):  # Faust's own, overridden without a word in internals.OVERRIDES
            return None

    found = "\n".join(_shadowed(Shadowing, list(Shadowing.__mro__[1:])))
    assert "Shadowing._runner (also faust.web.drivers.aiohttp:Web)" in found
    assert "Shadowing._create_site (also faust.web.drivers.aiohttp:Web)" in found


def test_internals_is_the_only_module_that_reaches_a_private_name_of_the_libraries():
    # Outside internals.py our code (the service and the testkit) may name a library's private attribute
    # only when it overrides it.
    packages = (kchat_faust, kchat_testkit)
    overridden = {o.name for o in internals.OVERRIDES}
    # Our own classes' private attributes (e.g. a Publisher's _producer, read by its PresenceSender).
    own = {name for package in packages for info in pkgutil.iter_modules(package.__path__)
           for cls in vars(importlib.import_module(f"{package.__name__}.{info.name}")).values()
           if inspect.isclass(cls) and cls.__module__.startswith(package.__name__ + ".")
           for name in _private_attributes_set(cls)}
    found = []
    for path in sorted(p for package in packages for p in Path(package.__file__).parent.glob("*.py")):
        if path.name == "internals.py" and path.parent.name == "kchat_faust":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                    and node.attr not in overridden | own:
                found.append(f"{path.parent.name}/{path.name}:{node.lineno} .{node.attr}")
    assert found == [], "private attributes reached outside internals.py:\n" + "\n".join(found)
