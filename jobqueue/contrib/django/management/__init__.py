"""Django management commands of the jobqueue app."""
