"""Pages and form posts that readers reach: subscribe, confirm, unsubscribe, preferences.

Views parse, call one function of service.subscriptions, commit, publish the
task that sends mail, and render.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, redirect, render_template, request
from werkzeug.wrappers import Response

from service import links
from service.autocommit import commit_held_work
from service.config import FREQUENCIES, get_settings
from service.consent import ConsentContext
from service.extensions import db
from service.models import Subscriber, SubscriberStatus, SubscriptionStatus
from service.proof_of_work import InvalidProofOfWork
from service.subscriptions import (
    ConfirmationPolicy,
    InvalidLink,
    InvalidSubscription,
    PreferencesUpdate,
    SubscriptionRequest,
    active_topics,
    confirm_subscription,
    request_new_confirmation,
    subscribe,
    subscribed_topic_ids,
    unsubscribe,
    update_preferences,
)
from service.tokens import (
    ExpiredToken,
    InvalidToken,
    TokenPurpose,
    read_confirm_token,
    read_subscriber_token,
    signer,
)
from service.web.abuse import (
    FORM_TIME_FIELD,
    HONEYPOT_FIELD,
    count_subscription_post,
    foreign_origin,
    form_time_token,
    looks_like_a_bot,
    too_many_requests,
)
from service.web.challenge import FIELD as POW_FIELD
from service.web.challenge import check_proof_of_work
from service.web.csrf import FIELD as CSRF_FIELD
from service.web.csrf import check_csrf
from service.web.errors import error_response
from service.web.forms import MalformedForm, SubmittedForm, read_form
from service.web.negotiation import wants_json
from tasks.publisher import publish_soon

bp = Blueprint("public", __name__)

CHECK_INBOX = (
    "Thanks! Check your inbox: we sent you an email with a link to confirm your subscription."
)


@bp.errorhandler(InvalidToken)
def invalid_token(error: InvalidToken):  # type: ignore[no-untyped-def]
    expired = isinstance(error, ExpiredToken)
    message = (
        "This link has expired." if expired else "This link is not valid. It may be incomplete."
    )
    if wants_json():
        return jsonify({"error": message}), 400
    token = request.view_args.get("token") if expired and request.view_args else None
    return render_template("invalid_link.html", message=message, resend_token=token), 400


@bp.errorhandler(InvalidLink)
def stale_link(error: InvalidLink):  # type: ignore[no-untyped-def]
    message = "This confirmation link is no longer valid: the subscription changed since it was sent."
    if wants_json():
        return jsonify({"error": message}), 400
    return render_template("invalid_link.html", message=message, resend_token=None), 400


@bp.errorhandler(MalformedForm)
def malformed_form(error: MalformedForm):  # type: ignore[no-untyped-def]
    return error_response(422, "Some fields could not be accepted.", errors=error.errors)


@bp.get("/")
def index() -> Response:
    """Send readers to the subscription form.
    ---
    get:
      summary: Redirect to the subscription form
      responses:
        302: {description: To /subscribe., headers: {Location: {schema: {type: string}}}}
    """
    return redirect("/subscribe")


@bp.get("/subscribe")
def subscribe_form() -> str:
    """The hosted, accessible subscription form listing the active topics.
    ---
    get:
      summary: The subscription form
      parameters:
        - name: topic
          in: query
          description: Topic slugs to pre-tick; repeat the parameter for several.
          schema: {type: array, items: {type: string, maxLength: 80}, example: [marvel-news]}
      responses:
        200: {description: The form., content: {text/html: {schema: Html}}}
    """
    preselected = request.args.getlist("topic")
    form = SubmittedForm(lists={"topics": preselected})
    return _render_subscribe(form, {})


@bp.post("/subscribe")
def subscribe_post():  # type: ignore[no-untyped-def]
    """Ask for a subscription: a confirmation email with a signed link follows.
    ---
    post:
      summary: Subscribe (double opt-in)
      requestBody:
        required: true
        content:
          application/x-www-form-urlencoded: {schema: SubscriptionForm}
          multipart/form-data: {schema: SubscriptionForm}
          application/json: {schema: SubscriptionForm}
      responses:
        200: {description: A "check your inbox" page., content: {text/html: {schema: Html}}}
        202: {description: Accepted (JSON clients)., content: {application/json: {schema: Accepted}}}
        303:
          description: Back to next, when its origin is allowed.
          headers: {Location: {schema: {type: string}}}
        403: ForeignOrigin
        413: FormTooLarge
        415: UnsupportedForm
        422: FormRefused
        429: TooManyRequests
    """
    if (refusal := count_subscription_post()) is not None:
        return too_many_requests(refusal)
    settings = get_settings()
    request.max_content_length = settings.MAX_FORM_BYTES
    if (origin := foreign_origin()) is not None:
        current_app.logger.info("subscription post from a foreign origin refused")
        return error_response(403, f"This form may only be posted from the publisher's own pages, "
                                   f"not from {origin[:100]}.")
    form = read_form(scalar_fields=("email", "name", "frequency", "timezone", "next",
                                    HONEYPOT_FIELD, FORM_TIME_FIELD, POW_FIELD), list_fields=("topics",))
    if looks_like_a_bot(form.get(HONEYPOT_FIELD), form.get(FORM_TIME_FIELD)):
        return _accepted(form)  # the same answer, and nothing stored or sent
    if settings.POW_REQUIRED:
        try:
            check_proof_of_work(form.get(POW_FIELD))
        except InvalidProofOfWork as refused:
            # Checked before anything else, so bots get no free validation of their fields.
            current_app.logger.info("proof of work refused: %s", refused.reason)
            form.values.pop(POW_FIELD, None)  # never hand a spent solution back
            errors = {POW_FIELD: "We couldn't check that you're human. Please try again."}
            if wants_json():
                return jsonify({"error": errors[POW_FIELD], "errors": errors}), 422
            return _render_subscribe(form, errors), 422
    try:
        outcome = subscribe(
            db.session,
            SubscriptionRequest(
                email=form.get("email"),
                topic_slugs=form.getlist("topics"),
                name=form.get("name") or None,
                frequency=form.get("frequency") or None,
                timezone=form.get("timezone") or None,
                consent=consent_context("json" if request.is_json else "form",
                                        page_url=request.referrer or form.get("next") or None),
            ),
            default_frequency=settings.DEFAULT_FREQUENCY,
            policy=confirmation_policy(),
            commit_new_reader=True,  # whatever else it did is committed below
        )
    except InvalidSubscription as invalid:
        db.session.rollback()
        if wants_json():
            return jsonify({"error": "Please correct the marked fields.", "errors": invalid.errors}), 422
        return _render_subscribe(form, invalid.errors), 422
    commit_held_work(db.session)
    publish_soon(outcome.delivery_ids)
    return _accepted(form)


def _accepted(form: SubmittedForm):  # type: ignore[no-untyped-def]
    """The one answer to every accepted post: it never tells whether the address was
    new, pending, confirmed, unsubscribed or suppressed (nor whether we took it for a bot)."""
    if wants_json():
        return jsonify({"status": "accepted", "message": CHECK_INBOX}), 202
    next_url = _allowed_redirect(form.get("next"))
    if next_url:
        return redirect(next_url, code=303)
    return _check_inbox_page()


def _check_inbox_page() -> str:
    """The same page for every accepted post, so rendered once per process (per mount point,
    which its links depend on), unless templates are being edited (debug)."""
    if current_app.debug:
        return render_template("check_inbox.html", message=CHECK_INBOX)
    pages: dict[str, str] = current_app.extensions.setdefault("check_inbox_pages", {})
    if request.script_root not in pages:
        pages[request.script_root] = render_template("check_inbox.html", message=CHECK_INBOX)
    return pages[request.script_root]


@bp.get("/confirm/<token>")
def confirm_page(token: str):  # type: ignore[no-untyped-def]
    """A page with a Confirm button; changes nothing (mail scanners fetch links) unless CONFIRM_ON_GET.
    ---
    get:
      summary: The confirmation page
      responses:
        200:
          description: The page; with CONFIRM_ON_GET, the confirmation itself.
          content: {text/html: {schema: Html}, application/json: {schema: Confirmed}}
        400: BadLink
    """
    read_confirm_token(token)
    if get_settings().CONFIRM_ON_GET:
        return _confirm(token)
    return render_template("confirm.html", token=token)


@bp.post("/confirm/<token>")
def confirm_post(token: str):  # type: ignore[no-untyped-def]
    """Confirm the address and every topic waiting for it. Harmless to repeat.
    ---
    post:
      summary: Confirm a subscription
      parameters:
        - CsrfHeader
      requestBody:
        content:
          application/x-www-form-urlencoded: {schema: CsrfForm}
          multipart/form-data: {schema: CsrfForm}
      responses:
        200:
          description: Confirmed.
          content: {text/html: {schema: Html}, application/json: {schema: Confirmed}}
        400: BadLink
        413: FormTooLarge
    """
    request.max_content_length = get_settings().MAX_FORM_BYTES
    read_confirm_token(token)  # a bad link is a bad link, whatever the form says
    check_csrf(token)
    return _confirm(token)


@bp.post("/confirm/resend")
def resend_confirmation():  # type: ignore[no-untyped-def]
    """Send a fresh confirmation to the reader behind an expired, but genuine, link.
    ---
    post:
      summary: Ask for a new confirmation email
      parameters:
        - CsrfHeader
      requestBody:
        required: true
        content:
          application/x-www-form-urlencoded: {schema: ResendForm}
          multipart/form-data: {schema: ResendForm}
          application/json: {schema: ResendForm}
      responses:
        200: {description: A "check your inbox" page., content: {text/html: {schema: Html}}}
        202: {description: Accepted (JSON clients)., content: {application/json: {schema: Accepted}}}
        400: BadLink
        413: FormTooLarge
        415: UnsupportedForm
        422: FormRefused
    """
    request.max_content_length = get_settings().MAX_FORM_BYTES
    form = read_form(scalar_fields=("token", CSRF_FIELD), list_fields=())
    claims = signer().read(TokenPurpose.CONFIRM, form.get("token"))  # any age: it was ours
    check_csrf(form.get("token"))
    subscriber_id, epoch = claims.get("sid"), claims.get("e")
    if isinstance(subscriber_id, int) and isinstance(epoch, int):
        delivery = request_new_confirmation(db.session, subscriber_id, epoch, confirmation_policy())
        db.session.commit()
        if delivery is not None:
            publish_soon([delivery.id])
    if wants_json():
        return jsonify({"status": "accepted", "message": CHECK_INBOX}), 202
    return _check_inbox_page()


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> str:
    """A page with an Unsubscribe button.
    ---
    get:
      summary: The unsubscribe page
      responses:
        200: {description: The page., content: {text/html: {schema: Html}}}
        400: BadLink
    """
    read_subscriber_token(TokenPurpose.UNSUBSCRIBE, token)
    return render_template("unsubscribe.html", token=token)


@bp.post("/unsubscribe/<token>")
def unsubscribe_post(token: str):  # type: ignore[no-untyped-def]
    """RFC 8058 one-click: no question asked, 2xx, never a redirect.
    ---
    post:
      summary: Unsubscribe from everything (one-click)
      requestBody:
        content:
          application/x-www-form-urlencoded: {schema: OneClickUnsubscribe}
          multipart/form-data: {schema: OneClickUnsubscribe}
      responses:
        200:
          description: Unsubscribed; links never expire.
          content: {text/html: {schema: Html}, application/json: {schema: Unsubscribed}}
        400: BadLink
    """
    request.max_content_length = get_settings().MAX_FORM_BYTES
    subscriber_id = read_subscriber_token(TokenPurpose.UNSUBSCRIBE, token)
    unsubscribe(db.session, subscriber_id)
    db.session.commit()
    if wants_json():
        return jsonify({"status": "unsubscribed"})
    return render_template("unsubscribed.html", preferences_url=links.preferences_url(subscriber_id))


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str):  # type: ignore[no-untyped-def]
    """Change topics, frequency and name, or leave (action=unsubscribe, or no topic at all).
    ---
    get:
      summary: The preferences page
      responses:
        200: {description: The page., content: {text/html: {schema: Html}}}
        400: BadLink
        404: Gone
    post:
      summary: Change preferences, or leave
      parameters:
        - CsrfHeader
      requestBody:
        required: true
        content:
          application/x-www-form-urlencoded: {schema: PreferencesForm}
          multipart/form-data: {schema: PreferencesForm}
          application/json: {schema: PreferencesForm}
      responses:
        200: {description: "Saved, or unsubscribed.", content: {text/html: {schema: Html}}}
        400: BadLink
        404: Gone
        413: FormTooLarge
        415: UnsupportedForm
        422: FormRefused
    """
    subscriber_id = read_subscriber_token(TokenPurpose.PREFERENCES, token)
    subscriber = db.session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return error_response(404, "We hold no data for this address any more.")
    if request.method == "GET":
        return _render_preferences(token, subscriber, None, {})

    request.max_content_length = get_settings().MAX_FORM_BYTES
    form = read_form(scalar_fields=("frequency", "name", "timezone", "action", CSRF_FIELD),
                     list_fields=("topics",))
    check_csrf(token)
    if form.get("action") == "unsubscribe":
        unsubscribe(db.session, subscriber_id, via="preferences")
        db.session.commit()
        return render_template("unsubscribed.html", preferences_url=None)
    try:
        update_preferences(db.session, subscriber_id, PreferencesUpdate(
            topic_slugs=form.getlist("topics"),
            frequency=form.get("frequency") or subscriber.frequency.value,
            name=form.get("name"),
            timezone=form.get("timezone") or None,
            consent=consent_context("preferences"),
        ))
    except InvalidSubscription as invalid:
        db.session.rollback()
        return _render_preferences(token, subscriber, form, invalid.errors), 422
    db.session.commit()
    if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
        return render_template("unsubscribed.html", preferences_url=None)
    return _render_preferences(token, subscriber, None, {}, saved=True)


def _confirm(token: str):  # type: ignore[no-untyped-def]
    claim = read_confirm_token(token)
    subscriber = confirm_subscription(db.session, claim.subscriber_id, claim.token_epoch)
    db.session.commit()
    topics = [s.topic for s in subscriber.subscriptions if s.status == SubscriptionStatus.CONFIRMED]
    if wants_json():
        return jsonify({"status": "confirmed", "topics": [t.slug for t in topics]})
    return render_template(
        "confirmed.html", topics=topics, preferences_url=links.preferences_url(subscriber.id)
    )


def _render_subscribe(form: SubmittedForm, errors: dict[str, str]) -> str:
    return render_template(
        "subscribe.html", topics=active_topics(db.session), form=form, errors=errors,
        frequencies=FREQUENCIES, default_frequency=get_settings().DEFAULT_FREQUENCY,
        form_time=form_time_token(), honeypot_field=HONEYPOT_FIELD, form_time_field=FORM_TIME_FIELD,
        pow_required=get_settings().POW_REQUIRED,
    )


def _render_preferences(token: str, subscriber: Subscriber, form: SubmittedForm | None,
                        errors: dict[str, str], saved: bool = False) -> str:
    chosen = subscribed_topic_ids(subscriber)
    topics = active_topics(db.session)
    if form is not None:
        wanted = set(form.getlist("topics"))
        chosen = {t.id for t in topics if t.slug in wanted}
    return render_template(
        "preferences.html", token=token, subscriber=subscriber, topics=topics, chosen=chosen,
        name=form.get("name") if form else (subscriber.name or ""),
        frequency=form.get("frequency") if form else subscriber.frequency.value,
        timezone=form.get("timezone") if form else subscriber.timezone,
        frequencies=FREQUENCIES, errors=errors, saved=saved,
        pending=subscriber.status == SubscriberStatus.PENDING,
    )


def confirmation_policy() -> ConfirmationPolicy:
    settings = get_settings()
    return ConfirmationPolicy(resend_after=timedelta(seconds=settings.CONFIRMATION_RESEND_SECONDS),
                              max_while_pending=settings.CONFIRMATION_MAX_PENDING)


def consent_context(source: str, page_url: str | None = None) -> ConsentContext:
    """What this request tells about the consent it carries, for the consent record."""
    return ConsentContext(source=source, text_version=get_settings().CONSENT_TEXT_VERSION,
                          page_url=page_url, ip_address=request.remote_addr,
                          user_agent=request.user_agent.string or None)


def _allowed_redirect(url: str) -> str | None:
    """Only back to a configured publisher origin (or our own): no open redirect."""
    # Control characters (a CR/LF would split the Location header) mean it is not a page's URL.
    if not url or not url.isprintable():
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    settings = get_settings()
    own = urlsplit(settings.PUBLIC_BASE_URL)
    allowed = {*settings.PUBLISHER_ORIGINS, f"{own.scheme}://{own.netloc}".lower()}
    return url if origin in allowed else None
