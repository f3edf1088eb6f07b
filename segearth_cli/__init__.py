"""segearth: geospatial pixel reasoning on GeoTIFFs of any size."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segearth")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
