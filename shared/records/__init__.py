"""Reference records: API keys, and the import and export of records files."""
