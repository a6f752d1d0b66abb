# world: auth-plugin
"""A starter auth check: the accounts and their passwords come from the plugin's config,

    [plugin.config]
    "alice@example.org" = "correct horse battery staple"

Plain-text passwords are for trying things out: keep hashes in real use (the auth-table
example in plugins/ checks Argon2 hashes).

Build: ./build.sh (needs python3 with venv; installs componentize-py 0.25.1 locally).
Try: portcullis plugin test starter.wasm --hook auth --user alice@example.org --password ...
"""

import hmac

from wit_world import exports
from wit_world.exports.auth import AuthResult_Accept, AuthResult_Reject
from wit_world.imports import config


class Auth(exports.Auth):
    def authenticate(self, session, mechanism, username, password):
        expected = config.get(username)
        # compare_digest takes the same time however much of a guess is right.
        if expected is not None and password and hmac.compare_digest(expected.encode(), password.encode()):
            return AuthResult_Accept(username)
        return AuthResult_Reject()
