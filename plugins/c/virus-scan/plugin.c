// world: virus-plugin
//
// virus-scan: a signature scanner for the Portcullis virus hook, in C.
//
// It reads the message through the host's resource in 64 KiB chunks and looks for each
// signature anywhere in the raw bytes, across chunk boundaries: the EICAR test string is
// built in; more come from the plugin's config as one string,
//
//     [plugin.config]
//     signatures = "Demo.Worm=X5O!WORM-TEST;Demo.Macro=AutoOpen-Shell"
//
// (`name=text` pairs separated by `;`). Raw bytes only: unlike the Rust example it does not
// decode MIME parts, so a base64-encoded attachment is matched only by a signature written
// in its encoded form. Nothing survives between messages: a fresh instance every call.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "virus_plugin.h"

#define CHUNK (64 * 1024)
#define MAX_SIGNATURES 64

struct signature {
    const char *name;
    size_t name_len;
    const uint8_t *text;
    size_t text_len;
};

static const char EICAR[] =
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

static const uint8_t *find(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t len) {
    if (len == 0 || hay_len < len) return NULL;
    for (size_t i = 0; i + len <= hay_len; i++) {
        if (hay[i] == needle[0] && memcmp(hay + i, needle, len) == 0) return hay + i;
    }
    return NULL;
}

// Splits "a=b;c=d" (kept alive by the caller) into signatures after the built-in one.
static size_t parse_signatures(char *config, struct signature *out, size_t max) {
    size_t n = 0;
    out[n++] = (struct signature){"Eicar-Test-Signature", 20, (const uint8_t *)EICAR, sizeof EICAR - 1};
    char *cursor = config;
    while (cursor && *cursor && n < max) {
        char *end = strchr(cursor, ';');
        if (end) *end = '\0';
        char *eq = strchr(cursor, '=');
        if (eq && eq != cursor && eq[1] != '\0') {
            out[n++] = (struct signature){cursor, (size_t)(eq - cursor), (const uint8_t *)(eq + 1), strlen(eq + 1)};
        }
        cursor = end ? end + 1 : NULL;
    }
    return n;
}

static void log_info(const char *text) {
    virus_plugin_string_t s;
    virus_plugin_string_set(&s, text);
    portcullis_filter_log_log(PORTCULLIS_FILTER_LOG_LEVEL_INFO, &s);
}

void exports_portcullis_filter_virus_scan(exports_portcullis_filter_virus_session_info_t *session,
                                          exports_portcullis_filter_virus_envelope_t *envelope,
                                          exports_portcullis_filter_virus_borrow_message_t message,
                                          exports_portcullis_filter_virus_scan_report_t *report) {
    exports_portcullis_filter_virus_scan_result_t *ret = &report->found;
    report->headers.len = 0;
    report->headers.ptr = NULL;
    // Our own config: one optional key.
    char *config = NULL;
    virus_plugin_string_t key, value;
    virus_plugin_string_set(&key, "signatures");
    if (portcullis_filter_config_get(&key, &value)) {
        config = malloc(value.len + 1);
        if (config) {
            memcpy(config, value.ptr, value.len);
            config[value.len] = '\0';
        }
        virus_plugin_string_free(&value);
    }
    struct signature sigs[MAX_SIGNATURES];
    size_t count = parse_signatures(config, sigs, MAX_SIGNATURES);
    size_t longest = 0;
    for (size_t i = 0; i < count; i++) {
        if (sigs[i].text_len > longest) longest = sigs[i].text_len;
    }

    // A window of the previous chunk's tail plus the new chunk, so a signature split across
    // two reads is still seen.
    uint8_t *window = malloc(CHUNK + longest);
    size_t kept = 0;
    uint64_t offset = 0;
    const struct signature *found = NULL;
    while (window && !found) {
        virus_plugin_list_u8_t chunk;
        portcullis_filter_types_method_message_read(message, offset, CHUNK, &chunk);
        if (chunk.len == 0) {
            virus_plugin_list_u8_free(&chunk);
            break;
        }
        memcpy(window + kept, chunk.ptr, chunk.len);
        size_t filled = kept + chunk.len;
        offset += chunk.len;
        virus_plugin_list_u8_free(&chunk);
        for (size_t i = 0; i < count && !found; i++) {
            if (find(window, filled, sigs[i].text, sigs[i].text_len)) found = &sigs[i];
        }
        kept = longest > 1 && filled >= longest - 1 ? longest - 1 : 0;
        memmove(window, window + filled - kept, kept);
    }

    if (found) {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_INFECTED;
        char name[128];
        size_t len = found->name_len < sizeof name - 1 ? found->name_len : sizeof name - 1;
        memcpy(name, found->name, len);
        name[len] = '\0';
        virus_plugin_string_dup(&ret->val.infected, name);
        log_info("virus-scan (C): signature found");
    } else if (!window) {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_ERROR;
        virus_plugin_string_dup(&ret->val.error, "out of memory");
    } else {
        ret->tag = EXPORTS_PORTCULLIS_FILTER_VIRUS_SCAN_RESULT_CLEAN;
    }
    free(window);
    free(config);
    // A borrowed handle must be given back before the call returns (the component model
    // traps otherwise).
    portcullis_filter_types_message_drop_borrow(message);
    exports_portcullis_filter_virus_session_info_free(session);
    exports_portcullis_filter_virus_envelope_free(envelope);
}
