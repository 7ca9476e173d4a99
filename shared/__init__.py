"""Code shared by the api and the worker: settings, database, and the pure rules."""
