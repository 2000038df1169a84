"""The zoo's version, recorded in every published manifest, conversion record and site build (also in pyproject.toml)."""

__version__ = "0.1.0"
