"""Entry point for ``celery -A tasks.worker worker`` and ``beat``."""

import sys

from service import create_app
from service.config import ConfigError

try:
    flask_app = create_app()
except ConfigError as error:
    sys.exit(f"configuration error: {error}")

celery_app = flask_app.extensions["celery"]
