"""The embedded outbox: read the mail the service would have sent.

Registered only when no SMTP_HOST is set, so it never exposes mail in a
deployment that sends for real.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage

from flask import Blueprint, Response, abort, render_template, request
from sqlalchemy import select

from service.config import get_settings
from service.digests import find_subscriber, preview_digest
from service.extensions import db
from service.models import LARGEST_ID, CapturedEmail

bp = Blueprint("outbox", __name__, url_prefix="/outbox")
PAGE_SIZE = 100
# Where <base> may go: after <head>, else after <html> or the doctype (the parser then opens the
# head itself), so a mail without a <head> is not thrown into quirks mode by a tag before its doctype.
_OPENING_TAGS = [re.compile(pattern, re.IGNORECASE) for pattern in
                 (r"<head\b[^>]*>", r"<html\b[^>]*>", r"<!doctype\b[^>]*>")]
_LINKS_IN_A_TAB = '<base target="_blank">'


@bp.get("/")
def outbox_list() -> str:
    emails = db.session.scalars(
        select(CapturedEmail).order_by(CapturedEmail.id.desc()).limit(PAGE_SIZE)
    ).all()
    return render_template("outbox_list.html", emails=emails)


@bp.get(f"/<int(max={LARGEST_ID}):email_id>")
def outbox_message(email_id: int) -> str:
    captured = db.session.get(CapturedEmail, email_id) or abort(404)
    parsed = message_from_bytes(captured.raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return render_template(
        "outbox_message.html", email=captured, headers=list(parsed.items()),
        html=_body(parsed, "html"), text=_body(parsed, "plain"),
    )


@bp.get("/preview")
def digest_preview() -> str:
    """The admin API's digest preview, for the embedded mode's readers of the outbox."""
    email = request.args.get("email", "").strip()
    subscriber = find_subscriber(db.session, email=email) if email else None
    rendered = preview_digest(db.session, get_settings(), subscriber) if subscriber else None
    return render_template("outbox_preview.html", email=email, subscriber=subscriber,
                           rendered=rendered)


@bp.get(f"/<int(max={LARGEST_ID}):email_id>/raw")
def outbox_raw(email_id: int) -> Response:
    captured = db.session.get(CapturedEmail, email_id) or abort(404)
    return Response(captured.raw, mimetype="text/plain", headers={"X-Content-Type-Options": "nosniff"})


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else ""


@bp.app_template_filter("links_open_in_a_tab")
def links_open_in_a_tab(html: str) -> str:
    """An email's HTML for the outbox's sandboxed frame, every link opening a tab of its own.

    The service's pages refuse to be framed (clickjacking), so a confirm link
    followed inside the frame would show the browser's error instead of the
    page. The frame's sandbox lets a new tab escape it; the stored mail is
    left as it was sent.
    """
    if not html:
        return html
    found = next((match for tag in _OPENING_TAGS if (match := tag.search(html))), None)
    at = found.end() if found else 0
    return html[:at] + _LINKS_IN_A_TAB + html[at:]
