// world: spam-plugin
//
// A starter spam rule: junk every message whose subject holds the configured word, or
// whose client's address is listed in the DNS blocklist `dnsbl` names — a lookup through
// the host's resolver, which works only when the operator grants it (`grant-dns = true`).
// (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
// template folder.)
//
// Build: ./build.sh (needs clang-19 and wasi-libc from Debian; installs wit-bindgen-cli,
// wasm-tools and the WASI adapter locally). Try, with --grant-dns to let it look up:
//     portcullis plugin test starter.wasm --hook spam message.eml

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spam_plugin.h"

static char *lower_copy(const uint8_t *text, size_t len) {
    char *out = malloc(len + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < len; i++) out[i] = (char)tolower(text[i]);
    out[len] = '\0';
    return out;
}

// Whether `ip` (IPv4) is listed in the DNSBL `zone`: its octets reversed, under the zone,
// have an A record. Without the grant the lookup is denied, and the rule is skipped.
static bool listed(const spam_plugin_string_t *ip, const spam_plugin_string_t *zone) {
    unsigned a, b, c, d;
    char text[16], name[300];
    if (ip->len >= sizeof text || zone->len > 253) return false;
    memcpy(text, ip->ptr, ip->len);
    text[ip->len] = '\0';
    if (sscanf(text, "%u.%u.%u.%u", &a, &b, &c, &d) != 4) return false;
    snprintf(name, sizeof name, "%u.%u.%u.%u.%.*s", d, c, b, a, (int)zone->len, (const char *)zone->ptr);

    spam_plugin_string_t query;
    spam_plugin_string_set(&query, name);
    portcullis_filter_dns_list_answer_t answers;
    portcullis_filter_dns_lookup_error_t error;
    if (portcullis_filter_dns_lookup(&query, PORTCULLIS_FILTER_DNS_RECORD_TYPE_A, &answers, &error)) {
        bool found = answers.len > 0;
        portcullis_filter_dns_list_answer_free(&answers);
        return found;
    }
    if (error.tag != PORTCULLIS_FILTER_DNS_LOOKUP_ERROR_NXDOMAIN) {
        // failed and denied both carry the reason.
        spam_plugin_string_t *why = error.tag == PORTCULLIS_FILTER_DNS_LOOKUP_ERROR_FAILED ? &error.val.failed
                                                                                          : &error.val.denied;
        char line[600];
        snprintf(line, sizeof line, "%.*s: %.*s", (int)zone->len, (const char *)zone->ptr, (int)why->len,
                 (const char *)why->ptr);
        spam_plugin_string_t message;
        spam_plugin_string_set(&message, line);
        portcullis_filter_log_log(PORTCULLIS_FILTER_LOG_LEVEL_WARN, &message);
    }
    portcullis_filter_dns_lookup_error_free(&error);
    return false;
}

// Returns true with `ret` filled in; false with `err` set says the plugin could not
// decide, and the host applies its on-error policy.
bool exports_portcullis_filter_spam_classify(exports_portcullis_filter_spam_session_info_t *session,
                                             exports_portcullis_filter_spam_envelope_t *envelope,
                                             exports_portcullis_filter_spam_borrow_message_t message,
                                             exports_portcullis_filter_spam_spam_result_t *ret,
                                             spam_plugin_string_t *err) {
    (void)err;
    // The word and the zone come from the operator's [plugin.config] table.
    spam_plugin_string_t key, value;
    spam_plugin_string_set(&key, "word");
    char *word = NULL;
    if (portcullis_filter_config_get(&key, &value)) {
        word = lower_copy(value.ptr, value.len);
        spam_plugin_string_free(&value);
    } else {
        word = lower_copy((const uint8_t *)"crypto", 6);
    }

    portcullis_filter_types_list_header_t headers;
    portcullis_filter_types_method_message_headers(message, &headers);
    int hit = 0;
    for (size_t i = 0; i < headers.len && word && *word; i++) {
        portcullis_filter_types_header_t *h = &headers.ptr[i];
        if (h->name.len == 7 && strncasecmp((const char *)h->name.ptr, "subject", 7) == 0) {
            char *subject = lower_copy(h->value.ptr, h->value.len);
            hit = subject && strstr(subject, word) != NULL;
            free(subject);
            break;
        }
    }
    portcullis_filter_types_list_header_free(&headers);
    free(word);

    bool on_list = false;
    spam_plugin_string_set(&key, "dnsbl");
    if (portcullis_filter_config_get(&key, &value)) {
        on_list = listed(&session->client_ip, &value);
        spam_plugin_string_free(&value);
    }

    ret->score = hit ? 10.0 : on_list ? 5.0 : 0.0;
    ret->verdict.tag = hit || on_list ? PORTCULLIS_FILTER_TYPES_VERDICT_JUNK : PORTCULLIS_FILTER_TYPES_VERDICT_ACCEPT;
    ret->headers.len = 1;
    ret->headers.ptr = malloc(sizeof(portcullis_filter_types_header_t));
    spam_plugin_string_dup(&ret->headers.ptr[0].name, "X-Starter");
    spam_plugin_string_dup(&ret->headers.ptr[0].value, hit ? "hit" : on_list ? "listed" : "miss");
    // Ours replaces any X-Starter the message came with.
    ret->remove_headers.len = 1;
    ret->remove_headers.ptr = malloc(sizeof(*ret->remove_headers.ptr));
    spam_plugin_string_dup(&ret->remove_headers.ptr[0], "X-Starter");

    // A borrowed handle must be given back before returning, or the call traps.
    portcullis_filter_types_message_drop_borrow(message);
    exports_portcullis_filter_spam_session_info_free(session);
    exports_portcullis_filter_spam_envelope_free(envelope);
    return true;
}
