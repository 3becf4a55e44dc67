"""Hand finished messages to an SMTP server, or to the embedded outbox.

Errors are sorted into two kinds the ledger acts on: a TemporarySendError
(4xx replies, refused or dropped connections) is retried later; a
PermanentSendError (5xx) is recorded and never retried.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from sqlalchemy.orm import Session

from service.config import Settings
from service.mail.ratelimit import RateLimiter, rate_limiter_for
from service.mail.signing import DkimSigner
from service.models import CapturedEmail


class SendError(Exception):
    """Base of the two kinds of failure; ``reply`` is what the server said."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class TemporarySendError(SendError):
    """Try again later: a 4xx reply or a network problem."""


class PermanentSendError(SendError):
    """Do not try again: a 5xx reply for this message or recipient."""


class Transport(Protocol):
    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str, message_id: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class SMTPSettings:
    host: str
    port: int
    security: str = "none"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0


class SMTPTransport:
    """One SMTP connection, opened lazily and reused for every message sent."""

    def __init__(self, settings: SMTPSettings) -> None:
        self._settings = settings
        self._connection: smtplib.SMTP | None = None

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str = "", message_id: str = "") -> None:
        try:
            connection = self._connect()
            refused = connection.sendmail(envelope_from, list(recipients), raw)
        except smtplib.SMTPRecipientsRefused as error:
            self._reset()
            code, reply = next(iter(error.recipients.values()))
            raise _classify(code, reply) from None
        except smtplib.SMTPResponseException as error:
            # smtplib has already sent RSET; only a 421 means the server is closing.
            if error.smtp_code == 421:
                self._drop()
            raise _classify(error.smtp_code, error.smtp_error) from None
        except (smtplib.SMTPException, OSError) as error:
            self._drop()
            raise TemporarySendError(f"connection problem: {error}") from None
        if refused:
            code, reply = next(iter(refused.values()))
            raise _classify(code, reply)

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._connection.quit()
            self._connection = None

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        s = self._settings
        if s.security == "tls":
            connection: smtplib.SMTP = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout, context=ssl.create_default_context()
            )
        else:
            connection = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            if s.security == "starttls":
                connection.starttls(context=ssl.create_default_context())
        if s.username:
            connection.login(s.username, s.password or "")
        self._connection = connection
        return connection

    def _reset(self) -> None:
        """After a refused message the session is still good; RSET and keep it."""
        if self._connection is None:
            return
        try:
            self._connection.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None


class OutboxTransport:
    """Stores messages in the database for the /outbox page instead of sending."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str = "", message_id: str = "") -> None:
        self._session.add(CapturedEmail(
            message_id=message_id, mail_from=envelope_from,
            recipients=", ".join(recipients), subject=subject, raw=raw,
        ))

    def close(self) -> None:
        pass


class SigningTransport:
    """Signs each message with DKIM, then hands it to the wrapped transport."""

    def __init__(self, inner: Transport, signer: DkimSigner) -> None:
        self._inner = inner
        self._signer = signer

    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str = "", message_id: str = "") -> None:
        self._inner.send(envelope_from, recipients, self._signer.sign(raw), subject, message_id)

    def close(self) -> None:
        self._inner.close()


class RateLimitedTransport:
    """Waits for the (global) rate limiter before each message."""

    def __init__(self, inner: Transport, limiter: RateLimiter) -> None:
        self._inner = inner
        self._limiter = limiter

    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str = "", message_id: str = "") -> None:
        self._limiter.wait()
        self._inner.send(envelope_from, recipients, raw, subject, message_id)

    def close(self) -> None:
        self._inner.close()


def transport_for(settings: Settings, session: Session) -> Transport:
    """SMTP when SMTP_HOST is set (timed, for /metrics), otherwise the embedded outbox;
    DKIM-signed and rate-limited when configured."""
    transport: Transport
    if settings.uses_outbox:
        transport = OutboxTransport(session)
    else:
        # Imported here: timing's transport is a subclass of SMTPTransport, defined above.
        from service.mail.timing import TimedSMTPTransport, smtp_metrics_for

        transport = TimedSMTPTransport(SMTPSettings(
            host=settings.SMTP_HOST or "", port=settings.SMTP_PORT, security=settings.SMTP_SECURITY,
            username=settings.SMTP_USERNAME, password=settings.SMTP_PASSWORD,
            timeout=settings.SMTP_TIMEOUT,
        ), smtp_metrics_for(settings))
    if settings.DKIM_PRIVATE_KEY and settings.DKIM_DOMAIN and settings.DKIM_SELECTOR:
        transport = SigningTransport(transport, DkimSigner(
            settings.DKIM_DOMAIN, settings.DKIM_SELECTOR, settings.DKIM_PRIVATE_KEY.encode()))
    limiter = rate_limiter_for(settings)
    if limiter is not None:
        transport = RateLimitedTransport(transport, limiter)
    return transport


def _classify(code: int, reply: bytes | str) -> SendError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    summary = f"{code} {text}".strip()
    return PermanentSendError(summary) if 500 <= code < 600 else TemporarySendError(summary)
