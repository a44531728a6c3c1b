import pytest

pytest_plugins = ["tests.support.kafka", "tests.support.worker"]

# A test that uses any of these fixtures crosses a real Kafka: it is marked `kafka`, so that
# `pytest -m "not kafka"` runs the unit tests alone, with no broker.
KAFKA_FIXTURES = {"kafka_cluster", "kafka_bootstrap", "kafka4_cluster", "kafka4_bootstrap", "own_kafka",
                  "worker_factory", "kchat_worker"}


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)
    # The local Kubernetes tests run last: `make test` builds their binaries and images in the
    # background meanwhile (scripts/k8s-local prefetch).
    items.sort(key=lambda item: item.path.name == "test_k8s_local.py")
