"""The package version, in a module of its own so that any module can read it without
importing the package (and so without import cycles)."""

__version__ = "0.1.0"
"""The package version (PEP 440)."""
