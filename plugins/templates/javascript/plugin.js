// world: spam-plugin
/**
 * A starter spam rule: junk every message whose subject holds the configured word.
 * (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
 * template folder.)
 *
 * Build: ./build.sh (needs node and npm; installs componentize-js 0.23.0 locally).
 * Try: portcullis plugin test starter.wasm --hook spam message.eml
 */
import { get } from 'portcullis:filter/config@0.2.0';

export const spam = {
  classify(session, envelope, message) {
    // The word comes from the operator's [plugin.config] table.
    const word = (get('word') ?? 'crypto').toLowerCase();
    const subject = message.headers().find((h) => h.name.toLowerCase() === 'subject');
    const hit = word !== '' && (subject?.value ?? '').toLowerCase().includes(word);
    return {
      score: hit ? 10 : 0,
      verdict: hit ? { tag: 'junk' } : { tag: 'accept' },
      headers: [{ name: 'X-Starter', value: hit ? 'hit' : 'miss' }],
      // Ours replaces any X-Starter the message came with.
      removeHeaders: ['X-Starter'],
    };
  },
};
