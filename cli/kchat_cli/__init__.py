"""kchat-cli: command-line client for the kchat-faust chat service."""

from importlib.metadata import PackageNotFoundError, version

try:
    # The CLI ships inside the kchat-faust distribution, so it shares its version.
    __version__ = version("kchat-faust")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
