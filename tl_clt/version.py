"""The package version (a module of its own so that modules inside tl_clt can read it)."""

__version__ = "0.1.0"
