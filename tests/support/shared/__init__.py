"""Helpers and data shared by the tiers of one test topic (unit and integration tests)."""
