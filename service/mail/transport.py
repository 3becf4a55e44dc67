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


class PipeliningSMTP(smtplib.SMTP):
    """smtplib's client, sending MAIL, RCPT and DATA in one write where the server offers
    PIPELINING (RFC 2920): two round trips per message instead of 3 + recipients."""

    def send_pipelined(self, sender: str, recipients: list[str], message: bytes
                       ) -> dict[str, tuple[int, bytes]]:
        """Like ``sendmail`` for a message that is already bytes with CRLF line endings.

        Returns the refused recipients, and raises as ``sendmail`` does; without
        PIPELINING it is ``sendmail``.
        """
        self.ehlo_or_helo_if_needed()
        if not self.has_extn("pipelining"):
            return self.sendmail(sender, recipients, message)
        for address in (sender, *recipients):
            if "\r" in address or "\n" in address or ">" in address:
                raise ValueError(f"not an envelope address: {address!r}")
        commands = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
        self.send("".join(f"{command}\r\n" for command in commands))
        mail_reply = self.getreply()
        refused = {r: reply for r in recipients if (reply := self.getreply())[0] not in (250, 251)}
        data_code, data_message = self.getreply()
        if data_code == 354 and (mail_reply[0] != 250 or len(refused) == len(recipients)):
            self.send(b".\r\n")  # a server that opened DATA anyway gets an empty message to refuse
            self.getreply()
            data_code = 503
        if data_code != 354:
            self._rset()
            if mail_reply[0] != 250:
                raise smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], sender)
            if len(refused) == len(recipients):
                raise smtplib.SMTPRecipientsRefused(refused)
            raise smtplib.SMTPDataError(data_code, data_message)
        self.send(_dot_stuffed(message) + b".\r\n")
        code, reply = self.getreply()
        if code != 250:
            self._rset()
            raise smtplib.SMTPDataError(code, reply)
        return refused


class PipeliningSMTP_SSL(smtplib.SMTP_SSL, PipeliningSMTP):
    pass


def _dot_stuffed(message: bytes) -> bytes:
    """RFC 5321 transparency: a line starting with '.' gets another; ends with CRLF."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


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
        self._connection: PipeliningSMTP | None = None

    def __enter__(self) -> SMTPTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str = "", message_id: str = "") -> None:
        try:
            connection = self._connect()
            refused = connection.send_pipelined(envelope_from, list(recipients), raw)
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

    def _connect(self) -> PipeliningSMTP:
        if self._connection is not None:
            return self._connection
        s = self._settings
        if s.security == "tls":
            connection: PipeliningSMTP = PipeliningSMTP_SSL(
                s.host, s.port, timeout=s.timeout, context=ssl.create_default_context()
            )
        else:
            connection = PipeliningSMTP(s.host, s.port, timeout=s.timeout)
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
