"""Hand finished messages to an SMTP server, or to the embedded outbox.

Errors are sorted into two kinds the ledger acts on: a TemporarySendError
(4xx replies, refused or dropped connections) is retried later; a
PermanentSendError (5xx) is recorded and never retried.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from sqlalchemy.orm import Session

from service.config import Settings
from service.mail.ratelimit import RateLimiter, rate_limiter_for
from service.mail.signing import DkimSigner
from service.models import CapturedEmail

log = logging.getLogger(__name__)


class SendError(Exception):
    """Base of the two kinds of failure; ``reply`` is what the server said."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class TemporarySendError(SendError):
    """Try again later: a 4xx reply or a network problem."""


class PermanentSendError(SendError):
    """Do not try again: a 5xx reply for this message or recipient."""


@dataclass(frozen=True)
class Envelope:
    """A finished message and whom it goes to."""

    sender: str
    recipients: Sequence[str]
    raw: bytes
    subject: str = ""
    message_id: str = ""
    # No line of ``raw`` starts with a dot (build_mime's output, DKIM-signed or not): SMTP's
    # dot-stuffing has nothing to add, and the scan of every message for it is skipped.
    transparent: bool = False


K = TypeVar("K")
Outcome = tuple[K, SendError | None]


class Transport(Protocol):
    def send(self, envelope_from: str, recipients: Sequence[str], raw: bytes,
             subject: str, message_id: str) -> None: ...

    def send_all(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
        """Send each keyed message; yield each key with its error (None when sent), in order."""
        ...

    def close(self) -> None: ...


def send_one_by_one(transport: Transport, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
    """``send_all`` for a transport whose messages cannot overlap."""
    for key, envelope in messages:
        try:
            transport.send(envelope.sender, envelope.recipients, envelope.raw, envelope.subject,
                           envelope.message_id)
        except SendError as error:
            yield key, error
        else:
            yield key, None


class PipeliningSMTP(smtplib.SMTP):
    """smtplib's client, sending MAIL, RCPT and DATA in one write where the server offers
    PIPELINING (RFC 2920): two round trips per message instead of 3 + recipients."""

    def pipelines(self) -> bool:
        self.ehlo_or_helo_if_needed()
        return self.has_extn("pipelining")

    def send_pipelined(self, sender: str, recipients: list[str], message: bytes
                       ) -> dict[str, tuple[int, bytes]]:
        """Like ``sendmail`` for a message that is already bytes with CRLF line endings.

        Returns the refused recipients, and raises as ``sendmail`` does; without
        PIPELINING it is ``sendmail``.
        """
        if not self.pipelines():
            return self.sendmail(sender, recipients, message)
        self.begin_message(sender, recipients)
        refused = self.read_begin_replies(sender, recipients)
        self.send_content(message)
        code, reply = self.getreply()
        if code != 250:
            self._rset()
            raise smtplib.SMTPDataError(code, reply)
        return refused

    def begin_message(self, sender: str, recipients: Sequence[str]) -> None:
        """Write MAIL, RCPT and DATA at once; their replies are read by ``read_begin_replies``."""
        if problem := envelope_problem(sender, recipients):
            raise ValueError(problem)
        commands = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
        self.send("".join(f"{command}\r\n" for command in commands))

    def read_begin_replies(self, sender: str, recipients: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """Read the replies to ``begin_message``: the refused recipients, or raise as ``sendmail``."""
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
        return refused

    def send_content(self, message: bytes, transparent: bool = False) -> None:
        """The message after DATA's 354, with the end-of-data line; its reply is read later.

        ``transparent``: no line of the message starts with a dot (see Envelope).
        """
        if not (transparent and message.endswith(b"\r\n")):
            message = _dot_stuffed(message)
        self.send(message + b".\r\n")


class PipeliningSMTP_SSL(smtplib.SMTP_SSL, PipeliningSMTP):
    pass


def envelope_problem(sender: str, recipients: Sequence[str]) -> str | None:
    """Why these addresses cannot go into SMTP commands as they are, if they cannot."""
    for address in (sender, *recipients):
        if "\r" in address or "\n" in address or ">" in address:
            return f"not an envelope address: {address!r}"
    return None


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


@dataclass(frozen=True)
class _Unanswered(Generic[K]):
    """A message sent in full whose end-of-data reply has not been read yet."""

    key: K
    seconds: float  # spent on it so far: its commands, their replies and its content
    refused: dict[str, tuple[int, bytes]]


class SMTPTransport:
    """One SMTP connection, opened lazily and reused for every message sent."""

    _clock: Callable[[], float] = staticmethod(time.perf_counter)

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
        envelope = Envelope(envelope_from, recipients, raw, subject, message_id)
        for _, error in self.send_all([(None, envelope)]):
            if error is not None:
                raise error

    def send_all(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
        """Send the messages over the one connection; yield each outcome in order.

        Where the server offers PIPELINING, a message's MAIL, RCPT and DATA are
        written before the reply to the previous message's end of data is read
        (RFC 2920 lets message content open a group), so a message waits for the
        server once instead of twice. Each outcome therefore comes after the next
        message has been taken from ``messages``; if taking it raises, the
        outcome of the message already sent is yielded before the error. Each
        outcome is yielded as soon as its reply is read, so whatever happens
        next cannot lose it.
        """
        unanswered: _Unanswered[K] | None = None
        replies_pending = False  # commands written whose replies are not read yet
        source = iter(messages)
        try:
            while True:
                try:
                    key, envelope = next(source)
                except StopIteration:
                    break
                except BaseException:
                    if unanswered is not None:
                        last, unanswered = self._read_end_of_data(unanswered), None
                        yield last
                    raise
                started = self._clock()
                recipients = list(envelope.recipients)
                if problem := envelope_problem(envelope.sender, recipients):
                    if unanswered is not None:  # outcomes stay in order
                        last, unanswered = self._read_end_of_data(unanswered), None
                        yield last
                    # Not the relay's doing: no timing, no SMTP error counted.
                    yield key, PermanentSendError(problem)
                    continue
                outcome: Outcome[K] | None = None
                failure: smtplib.SMTPException | OSError | None = None
                try:
                    connection = self._connect()
                    if unanswered is None and not connection.pipelines():
                        refused = connection.send_pipelined(envelope.sender, recipients, envelope.raw)
                        outcome = self._outcome(key, self._clock() - started, _refusal(refused))
                    else:
                        connection.begin_message(envelope.sender, recipients)
                        replies_pending = True
                except (smtplib.SMTPException, OSError) as error:
                    failure = error
                if unanswered is not None:
                    # Read even when writing the commands failed: the reply may be there already.
                    last, unanswered = self._read_end_of_data(unanswered), None
                    yield last
                if failure is not None:
                    replies_pending = False
                    yield self._failed(key, started, failure)
                    continue
                if outcome is not None:
                    yield outcome
                    continue
                started = self._clock()
                if self._connection is None:  # the previous reply was the connection's last
                    replies_pending = False
                    closed = TemporarySendError("connection problem: closed by the relay")
                    yield self._outcome(key, 0.0, closed)
                    continue
                try:
                    refused = self._connection.read_begin_replies(envelope.sender, recipients)
                    self._connection.send_content(envelope.raw, envelope.transparent)
                except (smtplib.SMTPException, OSError) as error:
                    replies_pending = False
                    yield self._failed(key, started, error)
                    continue
                replies_pending = False
                unanswered = _Unanswered(key, self._clock() - started, refused)
            if unanswered is not None:
                last, unanswered = self._read_end_of_data(unanswered), None
                yield last
        finally:
            if unanswered is not None or replies_pending:
                # Abandoned mid-exchange: the session's replies would be out of step with its commands.
                if unanswered is not None:
                    log.warning("a message (%r) went to the relay but its outcome was not read; "
                                "it will be sent again", unanswered.key)
                self._drop()

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._connection.quit()
            self._connection = None

    def _finished(self, seconds: float, error: SendError | None) -> None:
        """Called once per message with the time spent talking to the server about it.

        Pipelined, that is its own exchange plus the wait for its last reply, not
        the time between, when the next message is being made.
        """

    def _outcome(self, key: K, seconds: float, error: SendError | None) -> Outcome[K]:
        self._finished(seconds, error)
        return key, error

    def _failed(self, key: K, started: float, error: smtplib.SMTPException | OSError) -> Outcome[K]:
        """The outcome of a message whose exchange raised ``error``; the connection is kept if it can be."""
        seconds = self._clock() - started
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            self._reset()
            code, reply = next(iter(error.recipients.values()))
            return self._outcome(key, seconds, _classify(code, reply))
        if isinstance(error, smtplib.SMTPResponseException) and self._usable():
            # The replies are read and RSET is sent; only a 421 means the server is closing.
            if error.smtp_code == 421:
                self._drop()
            return self._outcome(key, seconds, _classify(error.smtp_code, error.smtp_error))
        self._drop()
        return self._outcome(key, seconds, TemporarySendError(f"connection problem: {error}"))

    def _usable(self) -> bool:
        # smtplib closes its socket before raising on some replies (a line too long, say).
        return self._connection is not None and self._connection.sock is not None

    def _read_end_of_data(self, unanswered: _Unanswered[K]) -> Outcome[K]:
        waiting_since = self._clock()
        try:
            if self._connection is None:
                raise smtplib.SMTPServerDisconnected("connection closed")
            code, reply = self._connection.getreply()
        except (smtplib.SMTPException, OSError) as error:
            self._drop()
            return self._outcome(unanswered.key, unanswered.seconds + self._clock() - waiting_since,
                                 TemporarySendError(f"connection problem: {error}"))
        if code == 421 or not self._usable():
            self._drop()
        # After the end of data the transaction is over whatever the reply: no RSET is needed.
        error = _refusal(unanswered.refused) if code == 250 else _classify(code, reply)
        return self._outcome(unanswered.key, unanswered.seconds + self._clock() - waiting_since, error)

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
        # Kept now, as a relay's 250 would be: a rollback of the caller's work after this
        # (the ledger's, when a later message fails) must not lose a message reported as sent.
        self._session.commit()

    def send_all(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
        return send_one_by_one(self, messages)

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

    def send_all(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
        return self._inner.send_all(
            (key, replace(envelope, raw=self._signer.sign(envelope.raw))) for key, envelope in messages)

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

    def send_all(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[Outcome[K]]:
        return self._inner.send_all(self._paced(messages))

    def _paced(self, messages: Iterable[tuple[K, Envelope]]) -> Iterator[tuple[K, Envelope]]:
        for message in messages:
            self._limiter.wait()
            yield message

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


def _refusal(refused: dict[str, tuple[int, bytes]]) -> SendError | None:
    """A message accepted for some recipients only: the first refusal stands for it."""
    if not refused:
        return None
    code, reply = next(iter(refused.values()))
    return _classify(code, reply)


def _classify(code: int, reply: bytes | str) -> SendError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    summary = f"{code} {text}".strip()
    return PermanentSendError(summary) if 500 <= code < 600 else TemporarySendError(summary)
