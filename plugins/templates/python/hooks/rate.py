# world: rate-plugin
"""A starter rate limit: defer an account's message once it has sent `per-minute` messages
in the last minute or `per-day` in the last 24 hours (the host keeps the counters),

    [plugin.config]
    per-minute = 10
    per-day = 500

Build: ./build.sh (needs python3 with venv; installs componentize-py 0.25.1 locally).
Try: portcullis plugin test starter.wasm --hook rate --usage 12 message.eml
"""

from wit_world import exports
from wit_world.imports import config, types


def limit(key, default):
    """A whole number from the config, or `default` when the key is absent or not a number."""
    try:
        return int(config.get(key) or default)
    except ValueError:
        return default


def later(text):
    """451 4.7.0: the client keeps the message and tries again later."""
    return types.Verdict_Defer(types.Reply(451, types.EnhancedCode(4, 7, 0), text))


class Rate(exports.Rate):
    def check(self, session, envelope, usage):
        if usage.account.minute.messages >= limit("per-minute", 10):
            return later("Too many messages this minute, try again shortly")
        if usage.account.day.messages >= limit("per-day", 500):
            return later("Daily sending limit reached, try again tomorrow")
        return types.Verdict_Accept()
