"""A real SMTP server for tests (aiosmtpd) that records what arrived.

Tests can make it refuse recipients, temporarily (4xx) or for good (5xx), and
can take it down and bring it back on the same port.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None, "no text/plain part"
        return part.get_content().replace("\r\n", "\n")

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        assert part is not None, "no text/html part"
        return part.get_content().replace("\r\n", "\n")

    def link(self, kind: str) -> str:
        """The first absolute link to /<kind>/... in the text part."""
        match = re.search(rf"https?://\S+/{kind}/\S+", self.text)
        assert match, f"no {kind} link in:\n{self.text}"
        return match.group(0)


class _RecordingHandler:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[ReceivedMessage] = []
        self.temporary_failures: dict[str, int] = {}
        self.permanent_failures: set[str] = set()
        self.attempts: dict[str, int] = {}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Offer PIPELINING (RFC 2920) as Postfix and most relays do, so the tests
        # go through the client's pipelined path. aiosmtpd reads commands one by one.
        session.host_name = hostname
        *extensions, last = responses  # the last line ("250 HELP") ends the reply
        return [*extensions, "250-PIPELINING", last]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.attempts[address] = self.attempts.get(address, 0) + 1
            if address in self.permanent_failures:
                return "550 5.1.1 No such user here"
            remaining = self.temporary_failures.get(address, 0)
            if remaining > 0:
                self.temporary_failures[address] = remaining - 1
                return "451 4.3.0 Mailbox temporarily unavailable, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        received = ReceivedMessage(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        with self.lock:
            self.messages.append(received)
        return "250 Message accepted for delivery"


class SMTPServer:
    def __init__(self) -> None:
        self.handler = _RecordingHandler()
        self.port = _free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Refuse connections inside the block, then accept again on the same port."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def reset(self) -> None:
        with self.handler.lock:
            self.handler.messages.clear()
            self.handler.temporary_failures.clear()
            self.handler.permanent_failures.clear()
            self.handler.attempts.clear()

    def fail_temporarily(self, address: str, times: int) -> None:
        with self.handler.lock:
            self.handler.temporary_failures[address] = times

    def fail_permanently(self, address: str) -> None:
        with self.handler.lock:
            self.handler.permanent_failures.add(address)

    def attempts(self, address: str) -> int:
        with self.handler.lock:
            return self.handler.attempts.get(address, 0)

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self.handler.lock:
            return list(self.handler.messages)

    def messages_to(self, address: str) -> list[ReceivedMessage]:
        return [m for m in self.messages if address in m.recipients]

    def wait_for(self, address: str, count: int = 1, timeout: float = 20) -> list[ReceivedMessage]:
        """Wait until ``count`` messages for ``address`` arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages_to(address)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"expected {count} message(s) to {address}, got {len(self.messages_to(address))}"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
