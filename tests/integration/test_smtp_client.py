"""Our SMTP client against a real server: pipelined where offered (RFC 2920), plain smtplib where not."""

import contextlib
import select
import smtplib
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

from service.mail.message import OutgoingMessage, build_mime, make_message_id
from service.mail.transport import (
    Envelope,
    PermanentSendError,
    PipeliningSMTP,
    SMTPSettings,
    SMTPTransport,
    TemporarySendError,
)
from tests.smtp import SMTPServer, _free_port

MESSAGE = b"Subject: dots\r\n\r\n.a line that starts with a dot\r\n..and two\r\n.\r\nend"


class _PlainHandler:
    """An aiosmtpd server as it comes: no PIPELINING."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.contents.append(envelope.content)
        return "250 OK"


def _client(port: int) -> PipeliningSMTP:
    client = PipeliningSMTP("127.0.0.1", port)
    client.ehlo()
    return client


def test_a_pipelining_server_gets_the_message_byte_for_byte(smtp: SMTPServer):
    client = _client(smtp.port)
    assert client.has_extn("pipelining")
    assert client.send_pipelined("news@example.com", ["peggy@example.com"], MESSAGE) == {}
    client.quit()
    [received] = smtp.messages
    assert received.raw == MESSAGE + b"\r\n"
    assert received.recipients == ["peggy@example.com"]


def test_refusals_come_back_as_smtplib_reports_them_and_the_session_goes_on(smtp: SMTPServer):
    smtp.handler.permanent_failures.add("gone@example.com")
    smtp.handler.temporary_failures["busy@example.com"] = 1
    client = _client(smtp.port)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.send_pipelined("news@example.com", ["gone@example.com"], MESSAGE)
    assert refused.value.recipients["gone@example.com"][0] == 550
    partly = client.send_pipelined("news@example.com", ["busy@example.com", "peggy@example.com"], MESSAGE)
    assert partly["busy@example.com"][0] == 451
    assert client.send_pipelined("news@example.com", ["busy@example.com"], MESSAGE) == {}
    client.quit()
    assert [m.recipients for m in smtp.messages] == [["peggy@example.com"], ["busy@example.com"]]


def test_the_transport_classifies_a_pipelined_refusal(smtp: SMTPServer):
    smtp.handler.permanent_failures.add("gone@example.com")
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=smtp.port)) as transport:
        with pytest.raises(PermanentSendError, match="550"):
            transport.send("news@example.com", ["gone@example.com"], MESSAGE)
        transport.send("news@example.com", ["peggy@example.com"], MESSAGE)
    assert [m.recipients for m in smtp.messages] == [["peggy@example.com"]]


def test_without_pipelining_it_is_plain_smtplib():
    handler = _PlainHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        client = _client(controller.port)
        assert not client.has_extn("pipelining")
        assert client.send_pipelined("news@example.com", ["peggy@example.com"], MESSAGE) == {}
        client.quit()
    finally:
        controller.stop()
    assert handler.contents == [MESSAGE + b"\r\n"]


@pytest.mark.parametrize("address", ["evil@example.com>\r\nRCPT TO:<x@example.com", "a@b\nc"])
def test_an_address_cannot_smuggle_commands(smtp: SMTPServer, address: str):
    client = _client(smtp.port)
    with pytest.raises(ValueError):
        client.send_pipelined("news@example.com", [address], MESSAGE)
    client.quit()
    assert smtp.messages == []


# ------------------------------------------------------------------ one message after another


def _message(n: int) -> bytes:
    return f"Subject: number {n}\r\n\r\nbody {n}\r\n.a dotted line\r\n".encode()


def _envelopes(addresses: list[str]) -> list[tuple[int, Envelope]]:
    return [(n, Envelope("news@example.com", (address,), _message(n))) for n, address in enumerate(addresses)]


def test_messages_in_a_row_arrive_in_order_and_each_outcome_is_its_own(smtp: SMTPServer):
    smtp.fail_permanently("gone@example.com")
    smtp.fail_temporarily("busy@example.com", times=1)
    addresses = ["a@example.com", "gone@example.com", "b@example.com", "busy@example.com", "c@example.com"]
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=smtp.port)) as transport:
        outcomes = list(transport.send_all(_envelopes(addresses)))
    assert [key for key, _ in outcomes] == [0, 1, 2, 3, 4]
    errors = [error for _, error in outcomes]
    assert errors[0] is None and errors[2] is None and errors[4] is None
    assert isinstance(errors[1], PermanentSendError) and "550" in errors[1].reply
    assert isinstance(errors[3], TemporarySendError) and "451" in errors[3].reply
    assert [(m.recipients, m.raw) for m in smtp.messages] == [
        (["a@example.com"], _message(0)), (["b@example.com"], _message(2)), (["c@example.com"], _message(4))]


def test_a_transparent_message_arrives_byte_for_byte_and_an_opaque_one_is_stuffed(smtp: SMTPServer):
    """build_mime's output goes out unscanned; anything else is dot-stuffed as before."""
    text = ".a line that starts with a dot\n" + "x" * 75 + "." * 100 + "\n.\n"
    raw = build_mime(OutgoingMessage("news@example.com", "peggy@example.com", "Dots", text, text,
                                     make_message_id("example.com"), datetime(2026, 11, 29, tzinfo=UTC)))
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=smtp.port)) as transport:
        outcomes = list(transport.send_all([
            (0, Envelope("news@example.com", ("peggy@example.com",), raw, transparent=True)),
            (1, Envelope("news@example.com", ("peggy@example.com",), MESSAGE)),
        ]))
    assert outcomes == [(0, None), (1, None)]
    assert [m.raw for m in smtp.messages] == [raw, MESSAGE + b"\r\n"]
    parts = list(message_from_bytes(smtp.messages[0].raw, policy=policy.default).iter_parts())
    assert [part.get_content().replace("\r\n", "\n") for part in parts] == [text, text]


class _HoldingServer:
    """A minimal SMTP server offering PIPELINING that answers a message's end of data only
    once the client's next command has arrived, or after ``patience`` seconds of silence.

    It records which of the two released each reply: a client that waits for the reply
    before starting the next message gets every one by the timeout. ``answers`` replaces
    the end-of-data reply of some messages (counted from 1; a 421 also closes the
    connection), and with ``hang_up_after`` it closes the connection instead of answering.
    """

    def __init__(self, patience: float = 2.0, hang_up_after: int | None = None,
                 answers: dict[int, bytes] | None = None, greeting: bytes = b"220 holder ESMTP") -> None:
        self.patience = patience
        self.greeting = greeting
        self.hang_up_after = hang_up_after
        self.answers = answers or {}
        self.released_by: list[str] = []
        self.messages: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed by the test
            # A client that hangs up with replies unread resets the connection: serve the next one.
            with connection, contextlib.suppress(OSError):
                self._converse(connection)

    def _converse(self, connection: socket.socket) -> None:
        pending = b""

        def line(timeout: float | None) -> bytes | None:
            nonlocal pending
            while b"\r\n" not in pending:
                if not select.select([connection], [], [], timeout)[0]:
                    return None
                chunk = connection.recv(65536)
                if not chunk:
                    return b""
                pending += chunk
            found, pending = pending.split(b"\r\n", 1)
            return found + b"\r\n"

        connection.sendall(self.greeting + b"\r\n")
        if not self.greeting.startswith(b"220"):
            return
        held: bytes | None = None  # the end-of-data reply not sent yet
        while True:
            command = line(self.patience if held else 10)
            if command == b"":
                return
            if held:
                self.released_by.append("timeout" if command is None else "next command")
                connection.sendall(held)
                if held.startswith(b"421"):
                    return
                held = None
                if command is None:
                    continue
            if command is None:
                return
            verb = command[:4].upper()
            if verb == b"EHLO":
                connection.sendall(b"250-holder\r\n250 PIPELINING\r\n")
            elif verb == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            elif verb == b"DATA":
                connection.sendall(b"354 go ahead\r\n")
                content = b""
                while (data_line := line(10)) != b".\r\n":
                    if not data_line:
                        return  # no end of data: not a message
                    content += data_line[1:] if data_line.startswith(b"..") else data_line
                self.messages.append(content)
                if len(self.messages) == self.hang_up_after:
                    return
                held = self.answers.get(len(self.messages), b"250 2.0.0 queued") + b"\r\n"
            else:
                connection.sendall(b"250 ok\r\n")


@pytest.fixture
def holding_server() -> Iterator[_HoldingServer]:
    server = _HoldingServer()
    yield server
    server.close()


def _send_all_to(server: _HoldingServer, count: int) -> list[tuple[int, object]]:
    addresses = [f"reader{n}@example.com" for n in range(count)]
    try:
        with SMTPTransport(SMTPSettings(host="127.0.0.1", port=server.port, timeout=10)) as transport:
            return list(transport.send_all(_envelopes(addresses)))
    finally:
        server.close()


def test_the_next_message_starts_before_the_last_reply_is_read(holding_server: _HoldingServer):
    outcomes = _send_all_to(holding_server, 4)
    assert outcomes == [(0, None), (1, None), (2, None), (3, None)]
    # The last message has no next one: its reply is released by the server's patience.
    assert holding_server.released_by == ["next command"] * 3 + ["timeout"]
    assert len(holding_server.messages) == 4


def test_a_failure_while_making_the_next_message_still_reports_the_one_sent(smtp: SMTPServer):
    def messages() -> Iterator[tuple[int, Envelope]]:
        yield 0, Envelope("news@example.com", ("a@example.com",), _message(0))
        raise RuntimeError("the database went away")

    seen: list[tuple[int, object]] = []
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=smtp.port)) as transport:
        with pytest.raises(RuntimeError, match="went away"):
            for key, error in transport.send_all(messages()):
                seen.append((key, error))
        transport.send("news@example.com", ["b@example.com"], _message(1))
    assert seen == [(0, None)]
    assert [m.recipients for m in smtp.messages] == [["a@example.com"], ["b@example.com"]]


def test_a_dropped_connection_fails_what_was_in_flight_and_the_rest_go_on_a_new_one():
    server = _HoldingServer(patience=0.2, hang_up_after=2)
    outcomes = _send_all_to(server, 4)
    assert [key for key, _ in outcomes] == [0, 1, 2, 3]
    errors = [error for _, error in outcomes]
    assert errors[0] is None and errors[3] is None
    # Message 1 reached the server but no reply came; message 2 had only begun. Both are retried.
    assert isinstance(errors[1], TemporarySendError) and isinstance(errors[2], TemporarySendError)
    assert server.messages == [_message(0), _message(1), _message(3)]


def test_a_refused_message_does_not_disturb_the_next():
    server = _HoldingServer(patience=0.2, answers={1: b"554 5.7.1 content rejected", 2: b"452 4.3.1 full"})
    outcomes = _send_all_to(server, 3)
    assert [key for key, _ in outcomes] == [0, 1, 2]
    errors = [error for _, error in outcomes]
    assert isinstance(errors[0], PermanentSendError) and "554" in errors[0].reply
    assert isinstance(errors[1], TemporarySendError) and "452" in errors[1].reply
    assert errors[2] is None
    assert server.released_by == ["next command", "next command", "timeout"]


def test_a_relay_closing_after_a_message_fails_that_one_and_the_one_begun_then_reconnects():
    server = _HoldingServer(patience=0.2, answers={1: b"421 4.3.2 shutting down"})
    outcomes = _send_all_to(server, 3)
    assert [key for key, _ in outcomes] == [0, 1, 2]
    errors = [error for _, error in outcomes]
    assert isinstance(errors[0], TemporarySendError) and "421" in errors[0].reply
    assert isinstance(errors[1], TemporarySendError)
    assert errors[2] is None
    assert server.messages == [_message(0), _message(2)]


def test_a_reply_smtplib_cannot_read_counts_as_a_lost_connection():
    # smtplib closes the socket on a reply line over 8 KiB before it raises.
    server = _HoldingServer(patience=0.2, answers={1: b"250 " + b"x" * 9000})
    outcomes = _send_all_to(server, 3)
    assert [key for key, _ in outcomes] == [0, 1, 2]
    errors = [error for _, error in outcomes]
    assert isinstance(errors[0], TemporarySendError) and isinstance(errors[1], TemporarySendError)
    assert errors[2] is None


def test_a_relay_that_refuses_the_session_defers_every_message_rather_than_failing_it():
    # A 554 greeting says nothing about the message or its reader: try again later.
    server = _HoldingServer(greeting=b"554 5.3.2 not accepting mail now")
    outcomes = _send_all_to(server, 2)
    assert [key for key, _ in outcomes] == [0, 1]
    assert all(isinstance(error, TemporarySendError) and "554" in error.reply for _, error in outcomes)
    assert server.messages == []


def test_without_pipelining_send_all_sends_one_after_another():
    handler = _PlainHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        with SMTPTransport(SMTPSettings(host="127.0.0.1", port=controller.port)) as transport:
            addresses = ["a@example.com", "b@example.com", "c@example.com"]
            outcomes = list(transport.send_all(_envelopes(addresses)))
    finally:
        controller.stop()
    assert outcomes == [(0, None), (1, None), (2, None)]
    assert handler.contents == [_message(0), _message(1), _message(2)]


def test_a_caller_that_stops_listening_leaves_a_transport_that_still_works(smtp: SMTPServer):
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=smtp.port)) as transport:
        for key, error in transport.send_all(_envelopes(["a@example.com", "b@example.com", "c@example.com"])):
            assert (key, error) == (0, None)
            break
        transport.send("news@example.com", ["d@example.com"], _message(3))
    smtp.wait_for("d@example.com")
    assert "c@example.com" not in {r for m in smtp.messages for r in m.recipients}


def test_an_unusable_address_fails_alone_between_two_sent_messages(holding_server: _HoldingServer):
    addresses = ["a@example.com", "evil@example.com>\r\nRCPT TO:<x@example.com", "b@example.com"]
    with SMTPTransport(SMTPSettings(host="127.0.0.1", port=holding_server.port, timeout=10)) as transport:
        outcomes = list(transport.send_all(_envelopes(addresses)))
    assert [key for key, _ in outcomes] == [0, 1, 2]
    errors = [error for _, error in outcomes]
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], PermanentSendError)
    assert holding_server.messages == [_message(0), _message(2)]
