"""Our SMTP client against a real server: pipelined where offered (RFC 2920), plain smtplib where not."""

import smtplib

import pytest
from aiosmtpd.controller import Controller

from service.mail.transport import PermanentSendError, PipeliningSMTP, SMTPSettings, SMTPTransport
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
