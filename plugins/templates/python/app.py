# world: spam-plugin
"""A starter spam rule: junk every message whose subject holds the configured word, or
whose client's address is listed in the DNS blocklist `dnsbl` names — a lookup through the
host's resolver, which works only when the operator grants it (`grant-dns = true`).
(For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
template folder.)

Build: ./build.sh (needs python3 with venv; installs componentize-py 0.25.1 locally).
Try: portcullis plugin test starter.wasm --hook spam message.eml, with --grant-dns to let
it look up.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.spam import SpamResult
from wit_world.imports import config, dns, log, types


def listed(ip, zone):
    """Whether `ip` (IPv4) is listed in the DNSBL `zone`: its octets reversed, under the
    zone, have an A record. Without the grant the lookup is denied, and the rule skipped."""
    octets = ip.split(".")
    if len(octets) != 4:
        return False
    try:
        return len(dns.lookup(".".join(reversed(octets)) + "." + zone, dns.RecordType.A)) > 0
    except Err as e:
        if not isinstance(e.value, dns.LookupError_Nxdomain):
            log.log(log.Level.WARN, f"{zone}: {e.value.value}")
        return False


class Spam(exports.Spam):
    def classify(self, session, envelope, message):
        # The word and the zone come from the operator's [plugin.config] table.
        word = (config.get("word") or "crypto").lower()
        subject = next((h.value.lower() for h in message.headers() if h.name.lower() == "subject"), "")
        hit = bool(word) and word in subject
        zone = config.get("dnsbl")
        on_list = bool(zone) and listed(session.client_ip, zone)
        score, said = (10.0, "hit") if hit else (5.0, "listed") if on_list else (0.0, "miss")
        return SpamResult(
            score,
            types.Verdict_Junk() if hit or on_list else types.Verdict_Accept(),
            [types.Header("X-Starter", said)],
            # Ours replaces any X-Starter the message came with.
            ["X-Starter"],
        )
