"""DKIM signing of the final bytes we hand to SMTP (dkimpy, RSA-SHA256).

The List-Unsubscribe headers are in the signed set, as RFC 8058 requires for
one-click unsubscribe to be trusted by mailbox providers.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim

# Signed when present; headers a message lacks are simply not signed.
SIGNED_HEADERS = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"Content-Type",
    b"List-Unsubscribe", b"List-Unsubscribe-Post", b"List-Id", b"Feedback-ID", b"Auto-Submitted",
)


@dataclass(frozen=True)
class DkimSigner:
    domain: str
    selector: str
    private_key_pem: bytes

    def sign(self, raw: bytes) -> bytes:
        """Return the message with a DKIM-Signature header in front."""
        present = {line.split(b":", 1)[0].strip().lower()
                   for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if b":" in line}
        headers = [h for h in SIGNED_HEADERS if h.lower() in present]
        signature = dkim.sign(raw, self.selector.encode(), self.domain.encode(), self.private_key_pem,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=headers,
                              linesep=b"\r\n")
        return signature + raw
