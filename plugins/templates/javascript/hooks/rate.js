// world: rate-plugin
/**
 * A starter rate limit: defer an account's message once it has sent `per-minute` messages
 * in the last minute or `per-day` in the last 24 hours (the host keeps the counters),
 *
 *     [plugin.config]
 *     per-minute = 10
 *     per-day = 500
 *
 * Build: ./build.sh (needs node and npm; installs componentize-js 0.23.0 locally).
 * Try: portcullis plugin test starter.wasm --hook rate --usage 12 message.eml
 */
import { get } from 'portcullis:filter/config@0.2.0';

// A whole number from the config, or `fallback` when the key is absent or not a number.
function limit(key, fallback) {
  const value = Number.parseInt(get(key) ?? '', 10);
  return Number.isNaN(value) ? fallback : value;
}

// 451 4.7.0: the client keeps the message and tries again later.
function later(text) {
  return { tag: 'defer', val: { code: 451, enhanced: { class: 4, subject: 7, detail: 0 }, text } };
}

export const rate = {
  check(session, envelope, usage) {
    if (usage.account.minute.messages >= limit('per-minute', 10)) {
      return later('Too many messages this minute, try again shortly');
    }
    if (usage.account.day.messages >= limit('per-day', 500)) {
      return later('Daily sending limit reached, try again tomorrow');
    }
    return { tag: 'accept' };
  },
};
