// world: auth-plugin
/**
 * A starter auth check: the accounts and their passwords come from the plugin's config,
 *
 *     [plugin.config]
 *     "alice@example.org" = "correct horse battery staple"
 *
 * Plain-text passwords are for trying things out: keep hashes in real use (the auth-table
 * example in plugins/ checks Argon2 hashes).
 *
 * Build: ./build.sh (needs node and npm; installs componentize-js 0.23.0 locally).
 * Try: portcullis plugin test starter.wasm --hook auth --user alice@example.org --password ...
 */
import { get } from 'portcullis:filter/config@0.2.0';

// Compares without stopping at the first difference, so the time taken does not tell how
// much of a guess was right.
function same(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

export const auth = {
  authenticate(session, mechanism, username, password) {
    const expected = get(username);
    if (expected !== undefined && password !== '' && same(expected, password)) {
      return { tag: 'accept', val: username };
    }
    return { tag: 'reject' };
  },
};
