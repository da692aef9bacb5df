"""The package version, in a module of its own: modules below the package root read it without
importing ``coldstart`` itself (whose lazy API imports them)."""

__version__ = "0.1.0"
