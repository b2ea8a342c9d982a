"""``jobqueue_worker`` and ``jobqueue_migrate``."""
