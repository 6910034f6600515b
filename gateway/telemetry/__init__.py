"""Metrics (and, later, traces and cost attribution)."""
