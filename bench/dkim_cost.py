"""What DKIM signing costs per message: dkimpy as the worker uses it, and where the time goes.

    .venv/bin/python -m bench.dkim_cost [--messages 200]

Signs a real ~38 KB digest (rendered by the service's own templates) with a
2048-bit key through service.mail.signing.DkimSigner, and times separately the
RSA private-key operation dkimpy does in Python (its ``pow``) against the same
operation in OpenSSL (the ``cryptography`` package), so the figures say how
much a native RSA would save. Writes bench/results/dkim.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.fanout import RESULTS, SUMMARY


def _digest_bytes() -> bytes:
    from service import create_app
    from service.config import get_settings
    from service.mail.compose import DigestSection, render_digest
    from service.mail.message import OutgoingMessage, build_mime
    from service.models import Article, Frequency, Subscriber, Topic

    app = create_app({"SECRET_KEY": "benchmark-secret-key-0123456789", "SEED_DEMO_TOPICS": "false",
                      "DATABASE_URL": "sqlite://", "PUBLIC_BASE_URL": "https://newsletter.example.com",
                      "MAIL_FROM": "Marvel News <news@example.com>"})
    with app.app_context():
        now = datetime.now(UTC)
        topic = Topic(id=1, slug="marvel-news", name="Marvel News", description="")
        articles = [Article(id=n, title=f"Story {n}: See Tom Cruise and Marvel Star On Set",
                            url=f"https://www.example.com/{n}", summary=SUMMARY, author="Tyler Pisapia",
                            image_url=f"https://cdn.example.com/{n}.jpg",
                            published_at=now - timedelta(minutes=n)) for n in range(20)]
        reader = Subscriber(id=1, email="reader@example.com", name="Peggy", frequency=Frequency.DAILY)
        rendered = render_digest(reader, [DigestSection(topic, articles)], get_settings())
        return build_mime(OutgoingMessage(
            mail_from="Marvel News <news@example.com>", to=reader.email, subject=rendered.subject,
            text=rendered.text, html=rendered.html, message_id="<1@example.com>", date=now,
            extra_headers=(("List-Unsubscribe", "<https://newsletter.example.com/unsubscribe/x>"),
                           ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))))


def _per_message_ms(action, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()

    from service.mail.signing import DkimSigner

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    raw = _digest_bytes()
    signer = DkimSigner("example.com", "bench", pem)
    numbers = key.private_numbers()
    block = int.from_bytes(hashlib.sha256(raw).digest() * 8, "big") % numbers.public_numbers.n

    def python_rsa() -> None:  # what dkimpy's rsa_decrypt does: CRT with Python's pow
        pow(block, numbers.dmp1, numbers.p)
        pow(block, numbers.dmq1, numbers.q)

    def openssl_rsa() -> None:
        key.sign(raw[:64], padding.PKCS1v15(), hashes.SHA256())

    figures = {name: statistics.median(_per_message_ms(action, args.messages)) for name, action in (
        ("dkimpy_sign_ms", lambda: signer.sign(raw)),
        ("python_rsa_ms", python_rsa),
        ("openssl_rsa_ms", openssl_rsa),
    )}
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "message_bytes": len(raw),
        "messages": args.messages,
        **{name: round(value, 3) for name, value in figures.items()},
        "dkimpy_messages_per_second_per_core": round(1000 / figures["dkimpy_sign_ms"]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dkim.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join([
        f"DKIM signing of a {len(raw):,}-byte digest, 2048-bit RSA, median of {args.messages}, "
        f"Python {result['machine']['python']}",
        "",
        "| step | ms per message |",
        "| --- | --- |",
        f"| dkimpy sign, all of it (canonicalise, hash, RSA) | {figures['dkimpy_sign_ms']:.2f} |",
        f"| of which the RSA private-key operation in Python (`pow`, CRT) | {figures['python_rsa_ms']:.2f} |",
        f"| the same RSA operation in OpenSSL (`cryptography`) | {figures['openssl_rsa_ms']:.2f} |",
        "",
        f"One core signs about {result['dkimpy_messages_per_second_per_core']} messages/s with dkimpy.",
        "",
    ])
    (RESULTS / "dkim.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
