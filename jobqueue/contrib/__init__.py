"""Integrations with the frameworks jobqueue's users run: one module per framework,
each importing only its own (optional) extra."""
