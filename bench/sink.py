"""A counting SMTP sink (aiosmtpd) for the benchmarks: accepts everything, keeps nothing.

Run as ``python -m bench.sink PORT``; it prints the number of messages received
on stdout whenever it changes (at most every 50 ms), so the benchmark can wait
for the last one without a database or a log file.
"""

from __future__ import annotations

import sys
import threading
import time

from aiosmtpd.controller import Controller


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += len(envelope.rcpt_tos)
        return "250 OK"


def main(port: int) -> None:
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_kwargs={"data_size_limit": 0})
    controller.start()
    print("ready", flush=True)
    last = -1
    try:
        while True:
            time.sleep(0.05)
            if handler.count != last:
                last = handler.count
                print(last, flush=True)
    finally:
        controller.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
