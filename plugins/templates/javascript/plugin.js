// world: spam-plugin
/**
 * A starter spam rule: junk every message whose subject holds the configured word, or
 * whose client's address is listed in the DNS blocklist `dnsbl` names — a lookup through
 * the host's resolver, which works only when the operator grants it (`grant-dns = true`).
 * (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
 * template folder.)
 *
 * Build: ./build.sh (needs node and npm; installs componentize-js 0.23.0 locally).
 * Try: portcullis plugin test starter.wasm --hook spam message.eml, with --grant-dns to
 * let it look up.
 */
import { get } from 'portcullis:filter/config@0.2.0';
import { lookup } from 'portcullis:filter/dns@0.2.0';
import { log } from 'portcullis:filter/log@0.2.0';

// Whether `ip` (IPv4) is listed in the DNSBL `zone`: its octets reversed, under the zone,
// have an A record. Without the grant the lookup is denied, and the rule is skipped.
function listed(ip, zone) {
  const octets = ip.split('.');
  if (octets.length !== 4) return false;
  try {
    return lookup(`${octets.reverse().join('.')}.${zone}`, 'a').length > 0;
  } catch (e) {
    // A failed import call throws; its error variant is in `payload`.
    if (e.payload?.tag !== 'nxdomain') log('warn', `${zone}: ${e.payload?.val ?? e}`);
    return false;
  }
}

export const spam = {
  classify(session, envelope, message) {
    // The word and the zone come from the operator's [plugin.config] table.
    const word = (get('word') ?? 'crypto').toLowerCase();
    const subject = message.headers().find((h) => h.name.toLowerCase() === 'subject');
    const hit = word !== '' && (subject?.value ?? '').toLowerCase().includes(word);
    const zone = get('dnsbl');
    const onList = zone !== undefined && listed(session.clientIp, zone);
    const [score, said] = hit ? [10, 'hit'] : onList ? [5, 'listed'] : [0, 'miss'];
    return {
      score,
      verdict: hit || onList ? { tag: 'junk' } : { tag: 'accept' },
      headers: [{ name: 'X-Starter', value: said }],
      // Ours replaces any X-Starter the message came with.
      removeHeaders: ['X-Starter'],
    };
  },
};
