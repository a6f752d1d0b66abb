# world: spam-plugin
"""A starter spam rule: junk every message whose subject holds the configured word.
(For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
template folder.)

Build: ./build.sh (needs python3 with venv; installs componentize-py 0.25.1 locally).
Try: portcullis plugin test starter.wasm --hook spam message.eml
"""

from wit_world import exports
from wit_world.exports.spam import SpamResult
from wit_world.imports import config, types


class Spam(exports.Spam):
    def classify(self, session, envelope, message):
        # The word comes from the operator's [plugin.config] table.
        word = (config.get("word") or "crypto").lower()
        subject = next((h.value.lower() for h in message.headers() if h.name.lower() == "subject"), "")
        hit = bool(word) and word in subject
        return SpamResult(
            10.0 if hit else 0.0,
            types.Verdict_Junk() if hit else types.Verdict_Accept(),
            [types.Header("X-Starter", "hit" if hit else "miss")],
            # Ours replaces any X-Starter the message came with.
            ["X-Starter"],
        )
