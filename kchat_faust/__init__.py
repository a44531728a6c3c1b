"""kchat-faust: a chat service on Apache Kafka. `faust -A kchat_faust worker` runs it."""
from .app import app

__all__ = ["app"]
__version__ = "0.1.0"
