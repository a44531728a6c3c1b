pytest_plugins = ["tests.support.kafka", "tests.support.worker"]


def pytest_collection_modifyitems(session, config, items):
    """The local Kubernetes tests run last: `make test` builds their binaries and images in the background
    meanwhile (scripts/k8s-local prefetch)."""
    items.sort(key=lambda item: item.path.name == "test_k8s_local.py")
