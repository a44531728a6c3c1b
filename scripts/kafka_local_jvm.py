"""kafka-local's JVMs: which java, the Kafka jars (fetched once with Maven into the cache), the command lines of
the servers and of Kafka's tools, and their class data sharing archives.

Class data sharing: a dynamic AppCDS archive of the server's classes roughly halves the CPU a node needs to
start (measured: 3.8 -> 2.0 CPU-seconds for a combined node), with no cost once running. The first node of an
`up` without an archive writes one when it exits (`down`); the next `up` verifies it in a throwaway JVM and
then uses it. Each tool (and first argument) has an archive of its own. KCHAT_KAFKA_CDS=0 turns this off.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from local_common import POM, Fail, cache_root, info, kafka_version

LOG4J_CONFIG = Path(__file__).resolve().parent / "kafka-log4j2.properties"
# JVM options for every server. SerialGC: one GC thread, no G1 regions; fits small heaps and a 2-core box.
SERVER_JVM_OPTS = ["-XX:+UseSerialGC", "-Djava.awt.headless=true"]
DEFAULT_HEAP = "256m"
TOOL_JVM_OPTS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]
GC_OPTION = re.compile(r"-XX:\+Use\w*GC$")
CDS_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
              "off": False}


def extra_server_opts():
    """KCHAT_KAFKA_JVM_OPTS, split on blanks; each word must be an option, or java would take it for the
    main class and every node would die at start with a puzzling log."""
    raw = os.environ.get("KCHAT_KAFKA_JVM_OPTS", "")
    opts = raw.split()
    bad = [o for o in opts if not o.startswith("-")]
    if bad:
        raise Fail(f"KCHAT_KAFKA_JVM_OPTS={raw}: expected JVM options, each starting with '-' (not {bad[0]!r})")
    return opts


def cds_enabled():
    raw = os.environ.get("KCHAT_KAFKA_CDS", "").strip()
    if not raw:
        return True
    if raw.lower() not in CDS_VALUES:
        raise Fail(f"KCHAT_KAFKA_CDS={raw}: expected 1 or 0 (or true/false, yes/no, on/off)")
    return CDS_VALUES[raw.lower()]


def java_bin():
    home = os.environ.get("JAVA_HOME")
    if home:
        if not (Path(home) / "bin" / "java").is_file():
            raise Fail(f"JAVA_HOME={home}: expected a JDK directory with bin/java (Java 17 or newer)")
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise Fail("java not found on PATH (Kafka 4.x needs Java 17 or newer; install a JDK or set JAVA_HOME)")
    return found


@functools.lru_cache(maxsize=None)
def java_info():
    """(path of a java >= 17, its -version text), or Fail."""
    java = java_bin()
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Fail(f"cannot run {java} -version: {e}")
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        raise Fail(f"cannot tell the version of {java} (output: {text.strip()[:80]!r}); Kafka 4.x needs Java 17+")
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    if major < 17:
        raise Fail(f"{java} is Java {major}; Kafka 4.x needs Java 17 or newer (set JAVA_HOME to a newer JDK)")
    return java, text


def checked_java():
    """Path of a java >= 17, or Fail."""
    return java_info()[0]


def lib_dir():
    """The jar directory for kafka.version; resolves it with mvn on first use (a fresh temp dir renamed into
place, so that a fetch cut short leaves nothing that looks complete)."""
    version = kafka_version()
    base = cache_root() / f"kafka-{version}"
    lib = base / "lib"
    marker = lib / f"kafka_2.13-{version}.jar"
    if lib.is_dir():
        if not marker.is_file():
            raise Fail(f"{lib} exists but has no {marker.name}; delete {base} and run `kafka-local fetch` again")
        return lib
    mvn = shutil.which("mvn")
    if not mvn:
        raise Fail("mvn not found on PATH; install Maven 3.8+ to fetch the Kafka jars (needed once)")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lib.tmp-", dir=base))
    log = base / "mvn.log"
    info(f"fetching Kafka {version} jars with Maven into {lib} (once) ...")
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp / 'lib'}", "-DincludeScope=runtime"]
    try:
        with open(log, "w") as lf:
            lf.write("$ " + " ".join(cmd) + "\n")
            lf.flush()
            rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0 or not (tmp / "lib" / marker.name).is_file():
            raise Fail(f"mvn failed to resolve the Kafka {version} jars (exit {rc}); see {log}")
        try:
            os.rename(tmp / "lib", lib)
        except OSError:
            if not marker.is_file():  # not a concurrent fetch that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lib


def server_cmd(lib, props, logs_dir, heap, cds=()):
    """A server's command line; a -XX:+Use...GC in KCHAT_KAFKA_JVM_OPTS replaces SerialGC (the caller picks
    the collector)."""
    extra = extra_server_opts()
    opts = SERVER_JVM_OPTS + list(cds)
    if any(GC_OPTION.match(o) for o in extra):
        opts = [o for o in opts if not GC_OPTION.match(o)]
    return java_cmd(lib, "kafka.Kafka", [str(props)], [f"-Xms{heap}", f"-Xmx{heap}", *opts, *extra],
                    [f"-Dkafka.logs.dir={logs_dir}"])


def tool_cmd(lib, main, args, cds=None):
    """Command line of a Kafka tool: WARN logging on stderr, C1 only (short-lived), a CDS archive per tool and
    first argument (`StorageTool random-uuid` loads far fewer classes than `StorageTool format`)."""
    if cds is None:
        sub = args[0] if args and re.fullmatch(r"[a-z][a-z-]*", args[0]) else ""
        use, dump = cds_options(lib, "-".join(filter(None, ["tool", main.rsplit(".", 1)[-1], sub])))
        cds = dump or use
    return java_cmd(lib, main, args, TOOL_JVM_OPTS + list(cds),
                    ["-Dkchat.log.level=WARN", "-Dkchat.log.target=SYSTEM_ERR"])


def java_cmd(lib, main, args, jvm_opts, extra_props=()):
    return [checked_java(), *jvm_opts, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", *extra_props,
            "-cp", f"{lib}/*", main, *args]


def run_tool(lib, main, args, check=True, capture=True, timeout=300):
    """Run a Kafka tool (log4j at WARN on stderr). Returns CompletedProcess."""
    cmd = tool_cmd(lib, main, args)
    try:
        cp = subprocess.run(cmd, capture_output=capture, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail(f"{main.rsplit('.', 1)[-1]} {' '.join(args[:2])} did not finish within {timeout}s")
    if check and cp.returncode != 0:
        raise Fail(f"{main.rsplit('.', 1)[-1]} failed (exit {cp.returncode}): {tool_error(cp)[:300]}")
    return cp


def tool_error(cp):
    """The most telling error line of a failed Kafka tool run."""
    lines = [ln.strip() for ln in ((cp.stdout or "") + "\n" + (cp.stderr or "")).splitlines() if ln.strip()]
    for ln in lines:
        m = re.match(r"Error while executing .*? : (.*)", ln)
        if m:
            return m.group(1)
    for ln in lines:
        m = re.search(r"(?:Exception|Error): (.+)", ln)
        if m and not ln.startswith("at "):
            return m.group(1)
    return lines[-1] if lines else "(no output)"


def cds_archive_path(lib, name):
    java, version_text = java_info()
    key = hashlib.sha1("\0".join([os.path.realpath(java), version_text, str(lib)]).encode()).hexdigest()
    return lib.parent / "cds" / f"{name}-{key[:16]}.jsa"


def cds_valid(lib, path):
    """True if a JVM can map the archive (checksums verified) with this java and classpath."""
    with tempfile.TemporaryDirectory(prefix="cds-check-") as tmp:  # a bad archive may crash the JVM
        try:
            cmd = [checked_java(), "-Xshare:on", "-XX:+VerifySharedSpaces", f"-XX:SharedArchiveFile={path}",
                   "-XX:-CreateCoredumpOnCrash", f"-XX:ErrorFile={tmp}/hs_err.log", "-cp", f"{lib}/*", "-version"]
            cp = subprocess.run(cmd, capture_output=True, cwd=tmp, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return cp.returncode == 0


def cds_options(lib, name="server"):
    """(options for every JVM of this kind, options for the one JVM that should write the archive, or None).
    name: "server", or "tool-<Class>" for a Kafka tool (those write theirs as soon as they exit)."""
    if not cds_enabled():
        return [], None
    final = cds_archive_path(lib, name)
    use = [f"-XX:SharedArchiveFile={final}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    candidates = sorted(final.parent.glob(final.name + ".tmp-*")) if final.parent.is_dir() else []
    if final.is_file():
        for c in candidates:  # leftovers of concurrent first runs
            if time.time() - c.stat().st_mtime > 300:
                c.unlink(missing_ok=True)
        return use, None
    for c in candidates:
        if cds_valid(lib, c):
            os.replace(c, final)
            if name == "server":
                info(f"class data sharing archive ready: {final}")
            return use, None
        if time.time() - c.stat().st_mtime > 120:  # not being written any more: broken
            c.unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    dump = [f"-XX:ArchiveClassesAtExit={final}.tmp-{os.getpid()}-{int(time.time())}", "-Xlog:cds=off",
            "-Xlog:cds+dynamic=off"]
    return [], dump

