# One image for every Procfile process; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service ./service
COPY tasks ./tasks
COPY email_templates ./email_templates
COPY migrations ./migrations
# Editable, so the app finds email_templates/ and migrations/ beside its package.
RUN pip install -e . && useradd --create-home --uid 1000 newsletter && chown -R newsletter /app
USER newsletter

EXPOSE 5000
# As the Procfile's web line (docs/deployment.md, "Scaling").
CMD ["granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "2", "--host", "0.0.0.0", "--port", "5000", \
     "--no-ws", "--workers-kill-timeout", "30", "service.wsgi:app"]
