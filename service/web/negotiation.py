"""Deciding between an HTML page and JSON for the same endpoint."""

from flask import request


def wants_json() -> bool:
    """True for the JSON API, or when the client sent JSON or prefers a JSON answer."""
    if request.is_json or request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"
