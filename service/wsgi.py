"""Entry point for ``gunicorn service.wsgi:app``."""

import sys

from service import create_app
from service.config import ConfigError

try:
    app = create_app()
except ConfigError as error:
    sys.exit(f"configuration error: {error}")
