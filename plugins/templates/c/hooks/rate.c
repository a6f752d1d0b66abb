// world: rate-plugin
//
// A starter rate limit: defer an account's message once it has sent `per-minute` messages
// in the last minute or `per-day` in the last 24 hours (the host keeps the counters),
//
//     [plugin.config]
//     per-minute = 10
//     per-day = 500
//
// Build: ./build.sh (needs clang-19 and wasi-libc from Debian; installs wit-bindgen-cli,
// wasm-tools and the WASI adapter locally). Try:
//     portcullis plugin test starter.wasm --hook rate --usage 12 message.eml

#include <stdlib.h>
#include <string.h>

#include "rate_plugin.h"

// A whole number from the config, or `fallback` when the key is absent or not a number.
static uint32_t limit(const char *key, uint32_t fallback) {
    rate_plugin_string_t k, value;
    rate_plugin_string_set(&k, key);
    if (!portcullis_filter_config_get(&k, &value)) return fallback;
    uint32_t n = 0;
    int digits = value.len > 0 && value.len <= 9;
    for (size_t i = 0; digits && i < value.len; i++) {
        if (value.ptr[i] < '0' || value.ptr[i] > '9') digits = 0;
        else n = n * 10 + (value.ptr[i] - '0');
    }
    rate_plugin_string_free(&value);
    return digits ? n : fallback;
}

// 451 4.7.0: the client keeps the message and tries again later.
static void later(exports_portcullis_filter_rate_verdict_t *ret, const char *text) {
    ret->tag = PORTCULLIS_FILTER_TYPES_VERDICT_DEFER;
    ret->val.defer.code = 451;
    ret->val.defer.enhanced.is_some = true;
    ret->val.defer.enhanced.val = (portcullis_filter_types_enhanced_code_t){.class_ = 4, .subject = 7, .detail = 0};
    rate_plugin_string_dup(&ret->val.defer.text, text);
}

void exports_portcullis_filter_rate_check(exports_portcullis_filter_rate_session_info_t *session,
                                          exports_portcullis_filter_rate_envelope_t *envelope,
                                          exports_portcullis_filter_rate_usage_t *usage,
                                          exports_portcullis_filter_rate_verdict_t *ret) {
    if (usage->account.minute.messages >= limit("per-minute", 10)) {
        later(ret, "Too many messages this minute, try again shortly");
    } else if (usage->account.day.messages >= limit("per-day", 500)) {
        later(ret, "Daily sending limit reached, try again tomorrow");
    } else {
        ret->tag = PORTCULLIS_FILTER_TYPES_VERDICT_ACCEPT;
    }
    exports_portcullis_filter_rate_session_info_free(session);
    exports_portcullis_filter_rate_envelope_free(envelope);
}
