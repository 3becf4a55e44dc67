"""Entry point for ``gunicorn service.wsgi:app``."""

import sys

from service import create_app
from service.config import ConfigError

# Gunicorn halts instead of rebooting workers forever when one exits with 3.
GUNICORN_WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(GUNICORN_WORKER_BOOT_ERROR)
