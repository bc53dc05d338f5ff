"""Frozen values every layer shares: the adapter and the base as read, findings and reports, other formats."""
