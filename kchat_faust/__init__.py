"""kchat-faust: a chat service on Apache Kafka. `faust -A kchat_faust worker` runs it.

Importing the package (or any of its modules but app) builds nothing and reads no environment.
Faust's `-A kchat_faust` asks the package for its `app` attribute: only then is the app built,
from the environment, by app.create_app().
"""
from importlib.metadata import version

__version__ = version("kchat-faust")


def __getattr__(name: str):
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .app import create_app
    from .config import ConfigError

    try:
        app = create_app()
    except ConfigError as exc:
        # A setting that cannot work stops the worker with one line, not a traceback.
        raise SystemExit(f"kchat: {exc}") from None
    # Importing .app bound that name to the submodule; from now on it is the app itself.
    globals()["app"] = app
    return app
