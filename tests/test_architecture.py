"""The package's shape: layered imports with no cycle, and modules that build nothing when imported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def test_import_layers_are_kept():
    # The contract lives in pyproject.toml ([tool.importlinter]); lint-imports exits 1 on a break.
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                m = stack.pop()
                on_stack.discard(m)
                component.append(m)
                if m == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_import_graph_has_no_cycle():
    # Imports inside functions count (the package's lazy `app` is one); TYPE_CHECKING ones do not.
    graph = grimp.build_graph("kchat_faust", exclude_type_checking_imports=True, cache_dir=None)
    assert len(graph.modules) > 10
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges.get(m, set())

    assert _cycles(Graph()) == [["a", "b", "c"]]


LEAF_IMPORT = """
import gc, json, os, sys

looked_up = []


def note(key):
    # Libraries may copy the whole environment at import; only kchat's own code counts.
    if "/kchat_faust/" in sys._getframe(2).f_code.co_filename:
        looked_up.append(key)


class Recorder(dict):
    def __getitem__(self, key):
        note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        note(key)
        return super().get(key, default)

    def __iter__(self):  # also makes dict(os.environ) go through __getitem__
        return iter(list(super().__iter__()))


os.environ = Recorder(os.environ)
import kchat_faust.config, kchat_faust.models, kchat_faust.limits, kchat_faust.sse
import kchat_faust.feed, kchat_faust.hub, kchat_faust.counting, kchat_faust.views
import faust, prometheus_client

apps = [o for o in gc.get_objects() if isinstance(o, faust.App)]
print(json.dumps({"env": looked_up, "apps": len(apps),
                  "metrics": sorted(n for n in prometheus_client.REGISTRY._names_to_collectors
                                    if n.startswith("kchat_"))}))
"""


def test_importing_the_modules_builds_nothing_and_reads_no_setting():
    # A bad setting would stop a worker; importing the modules must not even look at it.
    done = subprocess.run([sys.executable, "-c", LEAF_IMPORT], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "KCHAT_REPLICATION_FACTOR": "not-a-number"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"env": [], "apps": 0, "metrics": []}


def test_the_package_builds_its_app_only_when_asked():
    done = subprocess.run(
        [sys.executable, "-c", "import kchat_faust, faust; assert 'app' not in vars(kchat_faust); "
                               "print(isinstance(kchat_faust.app, faust.App), kchat_faust.app.settings.partitions)"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "KCHAT_PARTITIONS": "6"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "6"]
