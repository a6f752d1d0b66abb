// world: rate-plugin
/**
 * rate-haraka: a submission rate policy for Portcullis, written the way a Haraka plugin
 * author thinks — a `plugin` object with `load_config()` and a `hook_*` function that
 * answers through `next(CODE, message)` with CONT, DENY or DENYSOFT.
 *
 * The host keeps the counters (per account and per client IP, over the last minute, hour
 * and day) and passes them in; this plugin only decides, and nothing survives between
 * messages (a fresh instance every time).
 *
 * Config ([plugin.config], every key optional; 0 means no limit):
 *   messages-per-minute = 20     per account
 *   messages-per-hour = 300      per account
 *   recipients-per-day = 2000    per account
 *   ip-messages-per-minute = 60  per client IP, whoever is logged in
 *   allow = ["newsletter@example.org"]   accounts without limits
 */
import { json } from 'portcullis:filter/config@0.2.0';
import { log } from 'portcullis:filter/log@0.2.0';

// Haraka's return codes.
const CONT = 'CONT';
const DENY = 'DENY';
const DENYSOFT = 'DENYSOFT';

const DEFAULTS = {
  'messages-per-minute': 20,
  'messages-per-hour': 300,
  'recipients-per-day': 2000,
  'ip-messages-per-minute': 60,
  allow: [],
};

const plugin = {
  cfg: DEFAULTS,

  load_config() {
    try {
      this.cfg = Object.assign({}, DEFAULTS, JSON.parse(json()));
    } catch (e) {
      log('warn', `rate-haraka: config is not JSON (${e}); using defaults`);
      this.cfg = DEFAULTS;
    }
  },

  // Called for each message once its envelope is complete, like Haraka's hook_rcpt_ok:
  // `usage` holds what was sent before this message.
  hook_envelope(next, connection, envelope, usage) {
    const cfg = this.cfg;
    const account = connection.account ?? '';
    if (cfg.allow.includes(account)) return next(CONT);

    const over = (limit, used) => limit > 0 && used >= limit;
    if (over(cfg['messages-per-minute'], usage.account.minute.messages)) {
      return next(DENYSOFT, `${account} sent ${usage.account.minute.messages} messages this minute; slow down`);
    }
    if (over(cfg['messages-per-hour'], usage.account.hour.messages)) {
      return next(DENYSOFT, `${account} reached ${cfg['messages-per-hour']} messages this hour`);
    }
    const recipients = usage.account.day.recipients + envelope.rcptTo.length;
    if (cfg['recipients-per-day'] > 0 && recipients > cfg['recipients-per-day']) {
      // A message that would cross the daily cap can never be sent today as it is.
      if (envelope.rcptTo.length > cfg['recipients-per-day']) {
        return next(DENY, `${envelope.rcptTo.length} recipients is more than the daily cap of ${cfg['recipients-per-day']}`);
      }
      return next(DENYSOFT, `${account} reached ${cfg['recipients-per-day']} recipients today`);
    }
    if (over(cfg['ip-messages-per-minute'], usage.clientIp.minute.messages)) {
      return next(DENYSOFT, `too many messages from ${connection.clientIp} this minute`);
    }
    return next(CONT);
  },
};

// Haraka's answers, as Portcullis verdicts.
function verdict(code, message) {
  switch (code) {
    case DENY:
      return { tag: 'reject', val: { code: 550, enhanced: { class: 5, subject: 7, detail: 1 }, text: message } };
    case DENYSOFT:
      return { tag: 'defer', val: { code: 451, enhanced: { class: 4, subject: 7, detail: 0 }, text: message } };
    default:
      return { tag: 'accept' };
  }
}

export const rate = {
  check(session, envelope, usage) {
    plugin.load_config();
    let answer = { tag: 'accept' };
    plugin.hook_envelope((code, message = '') => {
      answer = verdict(code, message);
      if (code !== CONT) log('info', `rate-haraka: ${code} ${message}`);
    }, session, envelope, usage);
    return answer;
  },
};
