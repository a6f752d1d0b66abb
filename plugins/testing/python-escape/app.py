# world: spam-plugin
"""python-escape (test only): a spam plugin that tries to leave the sandbox.

It opens a file, lists a directory, reads the environment, resolves and connects a socket,
and reports what each attempt got in headers, so an end-to-end test can check that every
one was refused inside the component. The verdict is always accept.
"""

import os
import socket

from wit_world import exports
from wit_world.exports.spam import SpamResult
from wit_world.imports import config, types


def attempt(action):
    try:
        result = action()
        return f"ALLOWED {result!r}"[:200]
    except Exception as e:  # noqa: BLE001 - every refusal is the expected outcome
        return f"denied {type(e).__name__}"


def tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", port))
    return "connected"


class Spam(exports.Spam):
    def classify(self, session, envelope, message):
        port = int(config.get("port") or "25")
        results = [
            ("X-Escape-File", attempt(lambda: open("/etc/passwd").read(16))),
            ("X-Escape-Dir", attempt(lambda: os.listdir("/"))),
            ("X-Escape-Env", attempt(lambda: sorted(os.environ))),
            ("X-Escape-Lookup", attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=1))),
            ("X-Escape-Tcp", attempt(lambda: tcp(port))),
        ]
        headers = [types.Header(name, value) for name, value in results]
        return SpamResult(0.0, types.Verdict_Accept(), headers, [])
