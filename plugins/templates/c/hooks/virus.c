// world: virus-plugin
//
// A starter virus scan: refuse every message that holds the configured byte string
// anywhere in its raw content (the EICAR test string when none is configured),
//
//     [plugin.config]
//     signature = "X5O!WORM-TEST"
//     name = "Demo.Worm"
//
// It reads the message in 64 KiB chunks and keeps the tail of each, so a signature split
// across two reads is still found. Raw bytes only: a base64 attachment must be matched in
// its encoded form (the virus-signatures example in plugins/ decodes MIME parts).
//
// Build: ./build.sh (needs clang-19 and wasi-libc from Debian; installs wit-bindgen-cli,
// wasm-tools and the WASI adapter locally). Try:
//     portcullis plugin test starter.wasm --hook virus message.eml

#include <stdlib.h>
#include <string.h>

#include "virus_plugin.h"

#define CHUNK (64 * 1024)

static const char EICAR[] = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

// A config string as a NUL-free byte buffer the caller frees, or NULL when absent or empty.
static uint8_t *config_bytes(const char *key, size_t *len) {
    virus_plugin_string_t k, value;
    virus_plugin_string_set(&k, key);
    if (!portcullis_filter_config_get(&k, &value)) return NULL;
    uint8_t *out = value.len ? malloc(value.len + 1) : NULL;
    if (out) {
        memcpy(out, value.ptr, value.len);
        out[value.len] = '\0';
        *len = value.len;
    }
    virus_plugin_string_free(&value);
    return out;
}

static int contains(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t len) {
    for (size_t i = 0; i + len <= hay_len; i++) {
        if (hay[i] == needle[0] && memcmp(hay + i, needle, len) == 0) return 1;
    }
    return 0;
}

void exports_portcullis_filter_virus_scan(exports_portcullis_filter_virus_session_info_t *session,
                                          exports_portcullis_filter_virus_envelope_t *envelope,
                                          exports_portcullis_filter_virus_borrow_message_t message,
                                          exports_portcullis_filter_virus_scan_report_t *report) {
    exports_portcullis_filter_virus_scan_result_t *ret = &report->found;
    size_t sig_len = 0, name_len = 0;
    uint8_t *signature = config_bytes("signature", &sig_len);
    uint8_t *name = signature ? config_bytes("name", &name_len) : NULL;
    const uint8_t *sig = signature ? signature : (const uint8_t *)EICAR;
    if (!signature) sig_len = sizeof EICAR - 1;
    const char *found_name = signature ? (name ? (const char *)name : "Starter-Signature") : "Eicar-Test-Signature";

    // The tail of the previous chunk (sig_len - 1 bytes at most) followed by the new one.
    uint8_t *window = malloc(sig_len - 1 + CHUNK);
    size_t kept = 0;
    uint64_t offset = 0;
    int infected = 0;
    while (window && !infected) {
        virus_plugin_list_u8_t chunk;
        portcullis_filter_types_method_message_read(message, offset, CHUNK, &chunk);
        if (chunk.len == 0) {
            virus_plugin_list_u8_free(&chunk);
            break;
        }
        offset += chunk.len;
        memcpy(window + kept, chunk.ptr, chunk.len);
        size_t filled = kept + chunk.len;
        virus_plugin_list_u8_free(&chunk);
        infected = contains(window, filled, sig, sig_len);
        kept = filled < sig_len - 1 ? filled : sig_len - 1;
        memmove(window, window + filled - kept, kept);
    }

    if (!window) {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_ERROR;
        virus_plugin_string_dup(&ret->val.error, "out of memory");
    } else if (infected) {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_INFECTED;
        virus_plugin_string_dup(&ret->val.infected, found_name);
    } else {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_CLEAN;
    }
    // A clean message is delivered with this header (only a clean one).
    report->headers.len = 1;
    report->headers.ptr = malloc(sizeof(*report->headers.ptr));
    virus_plugin_string_dup(&report->headers.ptr[0].name, "X-Starter-Scan");
    virus_plugin_string_dup(&report->headers.ptr[0].value, "clean");
    free(window);
    free(signature);
    free(name);
    // A borrowed handle must be given back before returning, or the call traps.
    portcullis_filter_types_message_drop_borrow(message);
    exports_portcullis_filter_virus_session_info_free(session);
    exports_portcullis_filter_virus_envelope_free(envelope);
}
