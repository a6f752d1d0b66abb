# world: virus-plugin
"""A starter virus scan: refuse every message that holds the configured byte string
anywhere in its raw content (the EICAR test string when none is configured),

    [plugin.config]
    signature = "X5O!WORM-TEST"
    name = "Demo.Worm"

It reads the message in 64 KiB chunks and keeps the tail of each, so a signature split
across two reads is still found. Raw bytes only: a base64 attachment must be matched in its
encoded form (the virus-signatures example in plugins/ decodes MIME parts).

Build: ./build.sh (needs python3 with venv; installs componentize-py 0.25.1 locally).
Try: portcullis plugin test starter.wasm --hook virus message.eml
"""

from wit_world import exports
from wit_world.exports.virus import ScanReport, ScanResult_Clean, ScanResult_Infected
from wit_world.imports import config, types

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
CHUNK = 64 * 1024


class Virus(exports.Virus):
    def scan(self, session, envelope, message):
        # A clean message is delivered with this header (only a clean one).
        return ScanReport(scan(message), [types.Header("X-Starter-Scan", "clean")])


def scan(message):
    signature = (config.get("signature") or "").encode()
    name = config.get("name") or "Starter-Signature"
    if not signature:
        signature, name = EICAR, "Eicar-Test-Signature"
    window = b""  # the tail of the previous chunk plus the new one
    offset = 0
    while True:
        chunk = message.read(offset, CHUNK)
        if not chunk:
            return ScanResult_Clean()
        offset += len(chunk)
        window += bytes(chunk)
        if signature in window:
            return ScanResult_Infected(name)
        window = window[-(len(signature) - 1):] if len(signature) > 1 else b""
