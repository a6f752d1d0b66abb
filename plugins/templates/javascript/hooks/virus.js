// world: virus-plugin
/**
 * A starter virus scan: refuse every message that holds the configured byte string
 * anywhere in its raw content (the EICAR test string when none is configured),
 *
 *     [plugin.config]
 *     signature = "X5O!WORM-TEST"
 *     name = "Demo.Worm"
 *
 * It reads the message in 64 KiB chunks and keeps the tail of each, so a signature split
 * across two reads is still found. Raw bytes only: a base64 attachment must be matched in
 * its encoded form (the virus-signatures example in plugins/ decodes MIME parts).
 *
 * Build: ./build.sh (needs node and npm; installs componentize-js 0.23.0 locally).
 * Try: portcullis plugin test starter.wasm --hook virus message.eml
 */
import { get } from 'portcullis:filter/config@0.2.0';

const EICAR = 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*';
const CHUNK = 64 * 1024;

// Where `needle` starts in `hay`, or -1.
function indexOf(hay, needle) {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (hay[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}

export const virus = {
  scan(session, envelope, message) {
    // A clean message is delivered with this header (only a clean one).
    return { found: scan(message), headers: [{ name: 'X-Starter-Scan', value: 'clean' }] };
  },
};

function scan(message) {
  let text = get('signature') ?? '';
  let name = get('name') ?? 'Starter-Signature';
  if (text === '') {
    text = EICAR;
    name = 'Eicar-Test-Signature';
  }
  const signature = new TextEncoder().encode(text);
  // The tail of the previous chunk plus the new one.
  let window = new Uint8Array(0);
  let offset = 0n;
  for (;;) {
    const chunk = message.read(offset, CHUNK);
    if (chunk.length === 0) return { tag: 'clean' };
    offset += BigInt(chunk.length);
    const joined = new Uint8Array(window.length + chunk.length);
    joined.set(window);
    joined.set(chunk, window.length);
    if (indexOf(joined, signature) >= 0) return { tag: 'infected', val: name };
    window = joined.slice(Math.max(0, joined.length - (signature.length - 1)));
  }
}
