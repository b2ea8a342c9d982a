"""The web dashboard (``pip install 'jobqueue[dashboard]'``): ``jobqueue dashboard``,
or :func:`asgi_app` mounted in an existing ASGI application.

Pages and a JSON API read straight from Postgres, through the same bounded
statements as the CLI; actions are CSRF-protected POSTs, logged with who did
them. See :mod:`jobqueue.dashboard.security` for the authentication rules.
"""

from __future__ import annotations

from jobqueue.dashboard.web import asgi_app

__all__ = ["asgi_app"]
