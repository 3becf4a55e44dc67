"""Defences of the public subscription form against bots and subscription bombing.

- Rate limits (service.web.rate_limits, in Redis when there is one) per client
  IP, per target address and per target domain.
- A honeypot field and a minimum fill time on the hosted form: a bot's post
  gets the normal answer and is quietly dropped.
- Form posts from browsers must come from the publisher origins we know.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Flask, current_app, jsonify, render_template, request
from itsdangerous import BadSignature, TimestampSigner

from service.config import Settings, get_settings
from service.suppressions import canonical_address
from service.web.input_guard import cannot_store
from service.web.rate_limits import Refusal, SubscribeLimits

HONEYPOT_FIELD = "website"
FORM_TIME_FIELD = "form_ts"


def init_abuse_protection(app: Flask, settings: Settings) -> None:
    # No rate-limit headers: identical answers for every address matter more than
    # telling clients their budget.
    app.extensions["subscribe_limits"] = SubscribeLimits(settings.LIMITER_STORAGE_URL, [
        ("ip", settings.SUBSCRIBE_LIMIT_PER_IP),
        ("address", settings.SUBSCRIBE_LIMIT_PER_ADDRESS),
        ("domain", settings.SUBSCRIBE_LIMIT_PER_DOMAIN),
    ])


def subscribe_limits() -> SubscribeLimits:
    return current_app.extensions["subscribe_limits"]


def _form_email() -> str:
    """The target address of a subscription post, as we would store it ('' if none)."""
    if (request.content_length or 0) > get_settings().MAX_FORM_BYTES:
        return ""  # the view answers 413; do not read the body here
    if request.is_json:
        body = request.get_json(silent=True)
        raw = body.get("email") if isinstance(body, dict) else None
    else:
        raw = request.form.get("email")
    if not isinstance(raw, str) or cannot_store(raw):
        return ""  # read_form refuses it next; a lone surrogate cannot even be a Redis key
    return canonical_address(raw)  # both spellings of an international domain count as one


def count_subscription_post() -> Refusal | None:
    """Count this post against its IP, target address and target domain; the refusal if over a limit."""
    address = _form_email()
    return subscribe_limits().hit({
        # With TRUSTED_PROXY_HOPS, ProxyFix has already put the client's own address here.
        "ip": request.remote_addr or "127.0.0.1",
        "address": address or "-",
        "domain": address.rpartition("@")[2] or "-",
    })


def too_many_requests(refusal: Refusal):  # type: ignore[no-untyped-def]
    """429 with Retry-After, as a page or JSON."""
    retry_after = refusal.retry_after
    message = "Too many subscription attempts. Please wait a little and try again."
    if request.is_json or request.accept_mimetypes.best == "application/json":
        response = jsonify({"error": message, "retry_after": retry_after})
    else:
        response = render_template("error.html", status=429, message=message, errors={})
    return response, 429, {"Retry-After": str(retry_after)}


def form_time_token() -> str:
    """A signed timestamp for the hosted form, to tell a human's pace from a bot's."""
    return TimestampSigner(get_settings().SECRET_KEY, salt="newsletter.form-time").sign(b"form").decode()


def looks_like_a_bot(honeypot: str, form_time: str) -> bool:
    """The honeypot was filled in, or the hosted form came back faster than a person types."""
    if honeypot.strip():
        return True
    if not form_time:
        return False  # a publisher's own form may not carry one
    signer = TimestampSigner(get_settings().SECRET_KEY, salt="newsletter.form-time")
    try:
        _, signed_at = signer.unsign(form_time, return_timestamp=True)
    except BadSignature:
        return True
    return time.time() - signed_at.timestamp() < get_settings().FORM_MIN_FILL_SECONDS


def allowed_origins() -> set[str]:
    settings = get_settings()
    own = urlsplit(settings.PUBLIC_BASE_URL)
    return {*settings.PUBLISHER_ORIGINS, f"{own.scheme}://{own.netloc}".lower(),
            request.host_url.rstrip("/").lower()}


def foreign_origin() -> str | None:
    """The origin a browser says this post came from, if it is not one we serve; else None.

    Requests with neither Origin nor Referer (servers, curl) are not browser
    form posts and are let through; the rate limits still apply to them.
    """
    origin = request.headers.get("Origin")
    if origin is None and request.referrer:
        origin = _origin_of(request.referrer)
    if origin is None:
        return None
    return None if origin.lower() in allowed_origins() else origin


def _origin_of(referrer: str) -> str:
    """The origin of a Referer; "null" (no page of ours) when it has none or cannot be parsed."""
    try:
        parts = urlsplit(referrer)
    except ValueError:  # e.g. an unclosed IPv6 bracket; no browser sends one
        return "null"
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "null"
