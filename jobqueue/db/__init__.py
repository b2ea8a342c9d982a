"""Database access: connection kinds, pools and migrations."""
