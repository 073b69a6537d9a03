"""Kakeya Python SDK (skeleton; the clients land in this package)."""
