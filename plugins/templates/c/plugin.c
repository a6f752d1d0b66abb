// world: spam-plugin
//
// A starter spam rule: junk every message whose subject holds the configured word.
// (For the other hooks: `portcullis plugin new --hook auth|rate|virus`, or hooks/ in the
// template folder.)
//
// Build: ./build.sh (needs clang-19 and wasi-libc from Debian; installs wit-bindgen-cli,
// wasm-tools and the WASI adapter locally). Try:
//     portcullis plugin test starter.wasm --hook spam message.eml

#include <ctype.h>
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

// Returns true with `ret` filled in; false with `err` set says the plugin could not
// decide, and the host applies its on-error policy.
bool exports_portcullis_filter_spam_classify(exports_portcullis_filter_spam_session_info_t *session,
                                             exports_portcullis_filter_spam_envelope_t *envelope,
                                             exports_portcullis_filter_spam_borrow_message_t message,
                                             exports_portcullis_filter_spam_spam_result_t *ret,
                                             spam_plugin_string_t *err) {
    (void)err;
    // The word comes from the operator's [plugin.config] table.
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

    ret->score = hit ? 10.0 : 0.0;
    ret->verdict.tag = hit ? PORTCULLIS_FILTER_TYPES_VERDICT_JUNK : PORTCULLIS_FILTER_TYPES_VERDICT_ACCEPT;
    ret->headers.len = 1;
    ret->headers.ptr = malloc(sizeof(portcullis_filter_types_header_t));
    spam_plugin_string_dup(&ret->headers.ptr[0].name, "X-Starter");
    spam_plugin_string_dup(&ret->headers.ptr[0].value, hit ? "hit" : "miss");
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
