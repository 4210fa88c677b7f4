"""Shared test support: real PostgreSQL clusters, ebk configs, CLI runner."""
