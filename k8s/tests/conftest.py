"""The tutorial on a one-node Kubernetes built here, as pytest tests (`make k8s-e2e`, `make k8s-smoke`).

    .venv/bin/python -m pytest k8s/tests [--smoke] [--keep] [--deadline S] [--posts N] [--rate R] [--interval S]
                                         [--rollout-posts N] [--seed N] [-x]

The `cluster` fixture (once per session) brings the cluster up (scripts/k8s-local up), builds and loads the
images, applies k8s/overlays/local with nothing changed but the Kafka image's reference, and at the end always
takes it down again -- after a failure, -x or Ctrl-C too -- checking that nothing of it is left, unless --keep
(K8S_KEEP=1). Those steps are checks of their own in the record. The tests (test_tutorial.py) run in file
order; after an essential one fails the rest are not run (they depend on it); -x stops at the first failure.

Each check's line is printed as it ends, then `k8s-e2e: N passed, M failed`; test-artifacts/k8s-e2e.json (or
k8s-smoke.json with --smoke) has each check's name, result, seconds and detail, and Part 2's figures. On a
failure the pods' state, events and logs go to test-artifacts/k8s-e2e-logs/. Every wait is bounded; --deadline
bounds all.

Not part of `make test`'s collection (its testpaths are tests/): tests/test_k8s_local.py runs --smoke in a
process of its own.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import threading

import pytest

from kchat_testkit.k8s import Deadline, Kube

# k8s/tests is no package: pytest puts this directory on sys.path for its conftest
from k8s_cluster import (Cluster, Options, Record, apply, describe_failure, down, images,
                         kept_message, local_common, sysctls, up)

RECORD = pytest.StashKey[Record]()
CLUSTER = pytest.StashKey[Cluster]()


def positive(kind):
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if kind is int else 'number'}, "
                                             f"got {raw!r}")
        return value
    return parse


def pytest_addoption(parser):
    g = parser.getgroup("k8s", "the tutorial on a one-node Kubernetes (k8s/tests)")
    g.addoption("--smoke", action="store_true", help="the short run: up, images, apply, Ready, one round trip")
    g.addoption("--keep", action="store_true", help="leave the cluster running at the end (env K8S_KEEP=1)")
    g.addoption("--deadline", type=positive(float), default=None,
                help="seconds for the whole run (default 3600, --smoke 1800; a cold build takes ~20 min of them)")
    g.addoption("--posts", type=positive(int), default=2000, help="Part 2 posts (default 2000)")
    g.addoption("--rate", type=positive(float), default=8.0, help="posts per second (default 8)")
    g.addoption("--interval", type=positive(float), default=20.0,
                help="seconds between broker pod deletions (default 20)")
    g.addoption("--rollout-posts", type=positive(int), default=600,
                help="posts during the rolling update (default 600)")
    g.addoption("--seed", type=int, default=None, help="random seed for the choice of pods")


def options(config) -> Options:
    o = config.option
    try:
        keep = o.keep or local_common.env_int("K8S_KEEP", 0, 0, 1) == 1
    except local_common.Fail as e:
        raise pytest.UsageError(str(e)) from None
    return Options(smoke=o.smoke, keep=keep, deadline=o.deadline or (1800.0 if o.smoke else 3600.0),
                   posts=o.posts, rate=o.rate, interval=o.interval, rollout_posts=o.rollout_posts, seed=o.seed)


def pytest_configure(config):
    for line in ("check(name): the check's name in the record (str.format'ted with the options)",
                 "essential: a failure here stops the run: the later tests depend on it",
                 "smoke: part of the short run (--smoke)"):
        config.addinivalue_line("markers", line)
    opts = options(config)
    capman = config.pluginmanager.getplugin("capturemanager")
    lock = threading.Lock()
    prog = "k8s-smoke" if opts.smoke else "k8s-e2e"

    def say(text: str) -> None:
        """A progress line, shown as it happens (not captured: a run is long), on a line of its own."""
        terminal = config.pluginmanager.getplugin("terminalreporter")
        with lock, (capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()):
            if terminal:
                terminal.write_line(f"{prog}: {text}", flush=True)
            else:
                print(f"{prog}: {text}", flush=True)

    config.stash[RECORD] = Record(name=prog, say=say)
    config.stash[CLUSTER] = Cluster(Kube(opts.deadline, say), opts, config.stash[RECORD], random.Random(opts.seed))


def pytest_collection_modifyitems(config, items):
    opts = config.stash[CLUSTER].opts
    if opts.smoke:
        dropped = [i for i in items if not i.get_closest_marker("smoke")]
        items[:] = [i for i in items if i.get_closest_marker("smoke")]
        config.hook.pytest_deselected(items=dropped)
    for item in items:
        # the run's own deadline ends it first; this only catches a hang outside every bounded wait
        item.add_marker(pytest.mark.timeout(opts.deadline + 600))


def check_name(item) -> str:
    marker = item.get_closest_marker("check")
    opts = item.config.stash[CLUSTER].opts
    return marker.args[0].format(**vars(opts)) if marker else item.name


@pytest.fixture(scope="session")
def cluster(pytestconfig):
    """Up, images, k8s/overlays/local applied; at the end down, and nothing left (unless --keep)."""
    c = pytestconfig.stash[CLUSTER]
    record, kube = c.record, c.kube
    before = sysctls(kube)
    try:
        record.step("cluster up (scripts/k8s-local up)", lambda: up(kube))
        record.step("images built here and loaded into containerd", lambda: images(kube))
        record.step("k8s/overlays/local applied (only the Kafka image overridden)", lambda: apply(kube))
        yield c
    except BaseException:
        c.collect_logs("the cluster's setup")
        raise
    finally:  # also after -x or Ctrl-C: no cluster is left behind unless asked for
        if c.opts.keep:
            record.say(kept_message())
        else:
            record.step("down leaves nothing behind", lambda: down(kube, before))


@pytest.fixture
def check(request):
    """The running test's entry in the record: a test sets .detail to what it saw."""
    entry = Detail()
    request.node.stash[DETAIL] = entry
    return entry


class Detail:
    detail = ""


DETAIL = pytest.StashKey[Detail]()
LINE = pytest.StashKey[str]()


def pytest_runtest_setup(item):
    first = item.config.stash[RECORD].first_failure
    if first:
        pytest.fail(f"not run: {first} failed", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    record, c = item.config.stash[RECORD], item.config.stash[CLUSTER]
    if report.when == "call" or (report.when == "setup" and report.failed):
        name = check_name(item)
        if report.passed:
            detail = item.stash[DETAIL].detail if DETAIL in item.stash else ""
        elif report.when == "setup":
            detail = f"not run: {record.first_failure} failed" if record.first_failure else \
                describe_failure(call.excinfo.value)
        else:
            e = call.excinfo.value
            detail = describe_failure(e)
            if item.get_closest_marker("essential") or isinstance(e, Deadline):
                record.first_failure = record.first_failure or name
            c.collect_logs(name)
        item.stash[LINE] = record.add(name, report.passed, call.duration, detail, test=item.nodeid)
    return report


def pytest_runtest_teardown(item):
    # the check's line under pytest's line for the test (-v), not in the middle of it
    if LINE in item.stash:
        item.config.stash[RECORD].say(item.stash[LINE])


@pytest.hookimpl(trylast=True)  # after the runner's own, which tears the session's fixtures down (-x too)
def pytest_sessionfinish(session):
    record = session.config.stash.get(RECORD, None)
    if record is not None and record.checks:
        record.write()


def pytest_terminal_summary(terminalreporter, config):
    record = config.stash.get(RECORD, None)
    if record is not None and record.checks:
        passed, failed = record.counts()
        terminalreporter.write_line(f"{record.name}: {passed} passed, {failed} failed "
                                    f"(test-artifacts/{record.name}.json)")
