"""Settings from the environment: the names here are a contract with k8s/ and the README."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from . import limits

# Settings never to be logged in clear.
SECRETS = frozenset({"sasl_password", "jwt_secret"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConfigError(ValueError):
    """A setting that cannot work: the worker refuses to start."""


def _int(env: dict, name: str, default: int, low: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < low:
        raise ConfigError(f"{name}={value} must be at least {low}")
    return value


def _float(env: dict, name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value} must be positive")
    return value


def _choice(env: dict, name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _kafka_security(env: dict) -> dict:
    protocol = env.get("KCHAT_KAFKA_SECURITY_PROTOCOL", "").strip().upper() or "PLAINTEXT"
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"KCHAT_KAFKA_SECURITY_PROTOCOL={protocol!r} must be one of "
                          f"{', '.join(SECURITY_PROTOCOLS)}")
    mechanism = env.get("KCHAT_KAFKA_SASL_MECHANISM", "").strip().upper() or "PLAIN"
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"KCHAT_KAFKA_SASL_MECHANISM={mechanism!r} must be one of "
                          f"{', '.join(SASL_MECHANISMS)}")
    values = {
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": env.get("KCHAT_KAFKA_SASL_USERNAME", ""),
        "sasl_password": env.get("KCHAT_KAFKA_SASL_PASSWORD", ""),
        "ssl_cafile": env.get("KCHAT_KAFKA_SSL_CAFILE", ""),
        "ssl_certfile": env.get("KCHAT_KAFKA_SSL_CERTFILE", ""),
        "ssl_keyfile": env.get("KCHAT_KAFKA_SSL_KEYFILE", ""),
    }
    if protocol.startswith("SASL_") and not (values["sasl_username"] and values["sasl_password"]):
        raise ConfigError(f"KCHAT_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                          "KCHAT_KAFKA_SASL_USERNAME and KCHAT_KAFKA_SASL_PASSWORD")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if values[name] and not os.path.isfile(values[name]):
            raise ConfigError(f"KCHAT_KAFKA_{name.upper()}={values[name]!r} is not a readable file")
    if bool(values["ssl_certfile"]) != bool(values["ssl_keyfile"]):
        raise ConfigError("KCHAT_KAFKA_SSL_CERTFILE and KCHAT_KAFKA_SSL_KEYFILE go together")
    return values


def kafka_servers(broker: str) -> str:
    """'kafka://a:9092,b:9092' (Faust's form) -> 'a:9092,b:9092' (aiokafka's form)."""
    hosts = []
    for part in broker.split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            hosts.append(part if ":" in part else f"{part}:9092")
    return ",".join(hosts)


@dataclass(frozen=True)
class Settings:
    broker: str = "kafka://127.0.0.1:9092"
    topic: str = "chatroom"
    partitions: int = 12
    replication_factor: int = 4
    min_insync_replicas: int = 2
    datadir: str = "kchat-data"
    advertised_host: str = "127.0.0.1"
    default_room: str = "lobby"
    max_text: int = limits.MAX_TEXT
    max_body: int = limits.MAX_BODY
    publish_timeout: float = 10.0
    subscriber_buffer: int = 1000
    keepalive: float = 15.0
    idempotency_window: float = limits.IDEMPOTENCY_WINDOW
    idempotency_retention: float = limits.IDEMPOTENCY_RETENTION
    presence_timeout: float = 15.0
    # Faust's default (60 s) left a killed worker's partitions -- its share of counting and
    # presence -- unread for a minute before the group moved them.
    group_session_timeout: float = 20.0
    startup_timeout: float = 300.0
    log_format: str = "text"
    # limits (0 = off)
    max_streams: int = 20000
    rate_limit: float = 0.0
    rate_burst: int = 20
    # optional authentication of clients
    jwt_secret: str = ""
    # how the worker reaches the brokers
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    @property
    def bootstrap_servers(self) -> str:
        return kafka_servers(self.broker)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        rf = _int(env, "KCHAT_REPLICATION_FACTOR", cls.replication_factor)
        # The default min ISR is 2, but a one-broker laptop (RF 1) can only ever have 1.
        min_isr = _int(env, "KCHAT_MIN_INSYNC_REPLICAS", min(cls.min_insync_replicas, rf))
        if min_isr > rf:
            raise ConfigError(
                f"KCHAT_MIN_INSYNC_REPLICAS={min_isr} is above KCHAT_REPLICATION_FACTOR={rf}: "
                "every acks=all publish would fail"
            )
        session = _float(env, "KCHAT_GROUP_SESSION_TIMEOUT", cls.group_session_timeout)
        if not 6 <= session <= 1800:  # the brokers' default group.min/max.session.timeout.ms
            raise ConfigError(f"KCHAT_GROUP_SESSION_TIMEOUT={session:g} is outside 6..1800 seconds, "
                              "which the brokers refuse")
        window = _float(env, "KCHAT_IDEMPOTENCY_WINDOW", cls.idempotency_window)
        retention = _float(env, "KCHAT_IDEMPOTENCY_RETENTION", cls.idempotency_retention)
        if retention < window:
            raise ConfigError(f"KCHAT_IDEMPOTENCY_RETENTION={retention:g} is below KCHAT_IDEMPOTENCY_WINDOW="
                              f"{window:g}: keys would be forgotten before the window does")
        broker = env.get("KCHAT_BROKER", "").strip() or cls.broker
        if not kafka_servers(broker):
            raise ConfigError(f"KCHAT_BROKER={broker!r} names no broker")
        return cls(
            broker=broker,
            partitions=_int(env, "KCHAT_PARTITIONS", cls.partitions),
            replication_factor=rf,
            min_insync_replicas=min_isr,
            datadir=env.get("KCHAT_DATADIR", "").strip() or cls.datadir,
            advertised_host=env.get("KCHAT_ADVERTISED_HOST", "").strip() or cls.advertised_host,
            default_room=env.get("KCHAT_DEFAULT_ROOM", "").strip() or cls.default_room,
            max_text=_int(env, "KCHAT_MAX_TEXT", cls.max_text),
            max_body=_int(env, "KCHAT_MAX_BODY", cls.max_body, low=limits.MIN_BODY),
            publish_timeout=_float(env, "KCHAT_PUBLISH_TIMEOUT", cls.publish_timeout),
            subscriber_buffer=_int(env, "KCHAT_SUBSCRIBER_BUFFER", cls.subscriber_buffer),
            keepalive=_float(env, "KCHAT_KEEPALIVE", cls.keepalive),
            idempotency_window=window,
            idempotency_retention=retention,
            presence_timeout=_float(env, "KCHAT_PRESENCE_TIMEOUT", cls.presence_timeout),
            group_session_timeout=session,
            startup_timeout=_float(env, "KCHAT_STARTUP_TIMEOUT", cls.startup_timeout),
            log_format=_choice(env, "KCHAT_LOG_FORMAT", ("text", "json")),
            max_streams=_int(env, "KCHAT_MAX_STREAMS", cls.max_streams, low=0),
            rate_limit=_float(env, "KCHAT_RATE_LIMIT", cls.rate_limit, allow_zero=True),
            rate_burst=_int(env, "KCHAT_RATE_BURST", cls.rate_burst),
            jwt_secret=env.get("KCHAT_JWT_SECRET", ""),
            **_kafka_security(env),
        )

    def aiokafka_options(self) -> dict:
        """Connection settings for the plain aiokafka clients (publisher, fan-out, reader)."""
        options: dict = {"bootstrap_servers": self.bootstrap_servers,
                         "security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options

    def faust_credentials(self):
        """The same settings in Faust's form, for the app's own consumer and producer."""
        import faust
        from faust.types.auth import SASLMechanism

        if self.security_protocol == "PLAINTEXT":
            return None
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.sasl_username, password=self.sasl_password,
            mechanism=SASLMechanism(self.sasl_mechanism),
            ssl_context=self.ssl_context() if self.security_protocol == "SASL_SSL" else None)

    def ssl_context(self):
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_cafile or None, certfile=self.ssl_certfile or None,
                                  keyfile=self.ssl_keyfile or None)

    def summary(self) -> dict:
        """The settings as logged at startup: secrets masked."""
        return {name: ("***" if name in SECRETS and value else value)
                for name, value in dataclasses.asdict(self).items()}

    def logging_config(self) -> dict | None:
        """A dictConfig for JSON lines (for log collectors on clusters); None keeps Faust's text logs."""
        if self.log_format != "json":
            return None
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                    "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                                    "rename_fields": {"asctime": "time", "levelname": "level",
                                                      "name": "logger"}}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
            "root": {"handlers": ["stderr"], "level": "INFO"},
        }
