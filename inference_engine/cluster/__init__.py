"""Kakeya on Ray Serve: replicas with session affinity and handoff (`kakeya cluster`)."""
