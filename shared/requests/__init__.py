"""Service-desk requests: the 4me event fields, defaults, matching, create/update."""
