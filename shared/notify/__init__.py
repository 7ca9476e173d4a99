"""Notifications to a caller's notify URL: payload, signing, delivery rules."""
