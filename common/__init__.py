"""Shared layer under both stages: config validation, errors, data sources, run tracking."""
