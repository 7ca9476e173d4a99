"""Celery workers: thin tasks that open a session and call the rules in ``shared``."""
