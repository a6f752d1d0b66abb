# world: spam-plugin
"""spam-bayes: a naive Bayes spam classifier for the Portcullis spam hook, in Python.

Each token of the subject and body (lower-cased words of letters, digits and a few joiners)
contributes its log-likelihood ratio, log(P(token | spam) / P(token | ham)), taken from the
plugin's config; unknown tokens contribute nothing. The score is the prior plus the sum
over the distinct tokens of the message, in nats: above `junk-at` the message goes to the
Junk folder, above `tag-at` it is tagged, otherwise it is accepted with its score.

Config (the [plugin.config] table, every key optional):

    prior = -1.0                 # log(P(spam) / P(ham)) before looking at the message
    tag-at = 2.0                 # X-Spam-Flag: YES from this score on
    junk-at = 5.0                # into Junk from this score on
    max-bytes = 65536            # how much of the body to read
    [plugin.config.tokens]       # token -> log-likelihood ratio (positive: spammy)
    viagra = 3.2
    invoice = -0.5

Nothing is kept between messages: the host makes a fresh instance for every call.
"""

import json
import math
import re

from wit_world import exports
from wit_world.exports.spam import SpamResult
from wit_world.imports import config, log, types

TOKEN = re.compile(r"[a-z0-9][a-z0-9'$€_-]{1,30}")

DEFAULTS = {
    "prior": -1.0,
    "tag-at": 2.0,
    "junk-at": 5.0,
    "max-bytes": 65536,
    "tokens": {},
}


def settings():
    merged = dict(DEFAULTS)
    try:
        merged.update(json.loads(config.json()))
    except ValueError:
        log.log(log.Level.WARN, "spam-bayes: config is not JSON; using defaults")
    return merged


def body_text(message, limit):
    """The body after the header block, read in chunks through the host resource."""
    data = bytearray()
    offset = 0
    while offset < limit:
        chunk = message.read(offset, min(16384, limit - offset))
        if not chunk:
            break
        data += chunk
        offset += len(chunk)
    end = data.find(b"\r\n\r\n")
    body = data[end + 4:] if end >= 0 else data
    return body.decode("utf-8", "replace")


def classify(subject, body, cfg):
    weights = cfg["tokens"]
    seen = set(TOKEN.findall(subject.lower())) | set(TOKEN.findall(body.lower()))
    score = float(cfg["prior"])
    hits = []
    for token in seen:
        weight = weights.get(token)
        if isinstance(weight, (int, float)) and math.isfinite(weight):
            score += weight
            hits.append((abs(weight), token))
    hits.sort(reverse=True)
    return score, [t for _, t in hits[:5]]


class Spam(exports.Spam):
    def classify(self, session, envelope, message):
        cfg = settings()
        subject = ""
        for header in message.headers():
            if header.name.lower() == "subject":
                subject = header.value
                break
        limit = max(0, int(cfg["max-bytes"]))
        score, top = classify(subject, body_text(message, limit), cfg)
        spam = score >= float(cfg["tag-at"])
        headers = [
            types.Header("X-Spam-Score", f"{score:.2f}"),
            types.Header("X-Spam-Flag", "YES" if spam else "NO"),
            types.Header("X-Spam-Tokens", ", ".join(top) if top else "none"),
        ]
        if score >= float(cfg["junk-at"]):
            verdict = types.Verdict_Junk()
        else:
            verdict = types.Verdict_Accept()
        # Ours stand in place of any the message came with.
        return SpamResult(score, verdict, headers, [h.name for h in headers])
