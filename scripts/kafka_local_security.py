"""SASL_SSL for scripts/kafka-local (`up --security sasl_ssl`): certificates, SCRAM users, properties, and a
standard-library client that authenticates the way Kafka clients do (for kafka-local's own readiness check).

Python 3 standard library only, like kafka-local; certificates are made with openssl.

In <state>/tls/: ca.pem (the CA clients trust), ca.key, broker.p12 (every broker's key and certificate, signed
by the CA, for 127.0.0.1, localhost and the brokers' namespace addresses), client.properties (what the Kafka
tools use). Users (SCRAM-SHA-512, created when the storage is formatted): `admin` (the brokers among
themselves and the tools) and `kchat` (the workers); their passwords are made per cluster and kept in
cluster.json under "security". Controllers keep a PLAINTEXT listener: they serve no client.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import ssl
import struct
import subprocess
from pathlib import Path

from local_common import Fail  # beside this module, as it is beside kafka-local

MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"
USERS = ("admin", "kchat")


class SecurityFail(Fail):
    pass


def openssl(*args, cwd):
    cp = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise SecurityFail(f"openssl {args[0]} failed: {cp.stderr.strip()[-300:]}")


def make(tls_dir, hosts):
    """A fresh CA, one broker certificate for hosts (IP addresses), users' passwords; returns the record."""
    tls_dir = Path(tls_dir)
    tls_dir.mkdir(parents=True, exist_ok=True)
    store_pw = secrets.token_hex(12)
    san = ",".join(["DNS:localhost"] + [f"IP:{h}" for h in sorted(set(hosts))])
    (tls_dir / "san.cnf").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=kafka-local CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=tls_dir)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kafka-local broker", "-keyout", "broker.key",
            "-out", "broker.csr", cwd=tls_dir)
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "30", "-extfile", "san.cnf", "-out", "broker.pem", cwd=tls_dir)
    openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
            "-name", "broker", "-passout", f"pass:{store_pw}", "-out", "broker.p12", cwd=tls_dir)
    for f in ("broker.key", "broker.csr", "san.cnf"):
        (tls_dir / f).unlink(missing_ok=True)
    rec = {"protocol": LISTENER, "mechanism": MECHANISM, "cafile": str(tls_dir / "ca.pem"),
           "keystore": str(tls_dir / "broker.p12"), "keystore_password": store_pw,
           "users": {u: secrets.token_hex(12) for u in USERS}, "client_properties": str(tls_dir / "client.properties")}
    Path(rec["client_properties"]).write_text("\n".join(f"{k}={v}" for k, v in client_props(rec).items()) + "\n")
    return rec


def jaas(user, password):
    return f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";'


def client_props(rec, user="admin"):
    return {"security.protocol": LISTENER, "sasl.mechanism": MECHANISM,
            "sasl.jaas.config": jaas(user, rec["users"][user]),
            "ssl.truststore.type": "PEM", "ssl.truststore.location": rec["cafile"]}


def server_props(rec, is_broker):
    """What a node adds to its properties; brokers talk SASL_SSL to clients and among themselves."""
    p = {"listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{LISTENER}:{LISTENER}"}
    if is_broker:
        lname = LISTENER.lower()
        p.update({
            "inter.broker.listener.name": LISTENER,
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.{lname}.{MECHANISM.lower()}.sasl.jaas.config": jaas("admin", rec["users"]["admin"]),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": rec["keystore"],
            "ssl.keystore.password": rec["keystore_password"],
            "ssl.key.password": rec["keystore_password"],
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": rec["cafile"],
        })
    return p


def format_args(rec):
    """StorageTool format arguments that create the SCRAM users in the cluster's first metadata."""
    out = []
    for user, password in rec["users"].items():
        out += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
    return out


# --------------------------------------------------------------------------------------------------------------
# a SASL_SSL connection: TLS, SaslHandshake v1, SaslAuthenticate v0 with SCRAM-SHA-512 (RFC 5802)


def connect(host, port, rec, user="admin", timeout=5.0):
    """A socket to a SASL_SSL listener, authenticated as user; raises SecurityFail or OSError."""
    ctx = ssl.create_default_context(cafile=rec["cafile"])
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        s = ctx.wrap_socket(raw, server_hostname=host)
        s.settimeout(timeout)
        _sasl(s, user, rec["users"][user])
        return s
    except BaseException:
        raw.close()
        raise


def request(s, api_key, version, body, correlation=1):
    """One request (header v1) and its response body (header v0 stripped)."""
    client = b"kafka-local"
    msg = struct.pack(">hhih", api_key, version, correlation, len(client)) + client + body
    s.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _read(s, 4))
    return _read(s, size)[4:]


def _read(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def _string(text):
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _sasl(s, user, password):
    resp = request(s, 17, 1, _string(MECHANISM))  # SaslHandshake v1
    (err,) = struct.unpack_from(">h", resp)
    if err:
        raise SecurityFail(f"SaslHandshake refused {MECHANISM} (error {err})")
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n={user},r={nonce}"
    server_first = _authenticate(s, ("n,," + first_bare).encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise SecurityFail("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha512")
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.sha512(client_key).digest(), auth_message, "sha512")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    server_final = _authenticate(s, f"{final_bare},p={proof}".encode()).decode()
    expected = hmac.digest(hmac.digest(salted, b"Server Key", "sha512"), auth_message, "sha512")
    if server_final != "v=" + base64.b64encode(expected).decode():
        raise SecurityFail("SCRAM: the server's signature does not match")


def _authenticate(s, data):
    resp = request(s, 36, 0, struct.pack(">i", len(data)) + data)  # SaslAuthenticate v0
    err, mlen = struct.unpack_from(">hh", resp)
    off = 4 + max(mlen, 0)
    if err:
        message = resp[4:off].decode(errors="replace") if mlen > 0 else ""
        raise SecurityFail(f"SASL authentication failed (error {err}): {message}")
    (blen,) = struct.unpack_from(">i", resp, off)
    return resp[off + 4:off + 4 + blen]
