"""kchat-faust: a chat service on Apache Kafka. `faust -A kchat_faust worker` runs it."""
__version__ = "0.1.0"

from .app import app  # noqa: E402

__all__ = ["app", "__version__"]
