"""Entry point for the Procfile's ``granian --interface wsgi service.wsgi:app`` (any WSGI server will do)."""

import sys

from service import create_app
from service.config import ConfigError

# Granian stops when a worker exits during start-up (as long as --respawn-failed-workers is off, as in
# the Procfile); gunicorn halts instead of rebooting workers forever only when one exits with 3.
WORKER_BOOT_ERROR = 3

try:
    app = create_app()
except ConfigError as error:
    print(f"configuration error: {error}", file=sys.stderr)
    sys.exit(WORKER_BOOT_ERROR)
