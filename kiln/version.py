"""Kiln's version: what artifacts, cache entries and reports record as having built them."""

__version__ = "0.1.0"
