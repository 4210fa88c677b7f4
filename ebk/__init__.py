"""ebk: encrypted backup and restore for PostgreSQL."""

__version__ = "0.1.0"
