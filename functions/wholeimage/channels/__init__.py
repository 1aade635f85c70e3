"""Notification channels: one module per chat service over shared rendering, escaping and classification."""
