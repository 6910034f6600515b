"""Tenant policies: YAML schema, loading with precise errors, and the live registry."""
