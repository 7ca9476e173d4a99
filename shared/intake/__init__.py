"""Each channel's payload: parsing, validation, and the answer codes."""
