// world: auth-plugin
//
// A starter auth check: the accounts and their passwords come from the plugin's config,
//
//     [plugin.config]
//     "alice@example.org" = "correct horse battery staple"
//
// Plain-text passwords are for trying things out: keep hashes in real use (the auth-table
// example in plugins/ checks Argon2 hashes).
//
// Build: ./build.sh (needs clang-19 and wasi-libc from Debian; installs wit-bindgen-cli,
// wasm-tools and the WASI adapter locally). Try:
//     portcullis plugin test starter.wasm --hook auth --user alice@example.org --password ...

#include <stdlib.h>
#include <string.h>

#include "auth_plugin.h"

// Compares without stopping at the first difference, so the time taken does not tell how
// much of a guess was right.
static int same(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    if (a_len != b_len) return 0;
    uint8_t diff = 0;
    for (size_t i = 0; i < a_len; i++) diff |= a[i] ^ b[i];
    return diff == 0;
}

void exports_portcullis_filter_auth_authenticate(exports_portcullis_filter_auth_session_info_t *session,
                                                 exports_portcullis_filter_auth_mechanism_t mechanism,
                                                 auth_plugin_string_t *username, auth_plugin_string_t *password,
                                                 exports_portcullis_filter_auth_auth_result_t *ret) {
    auth_plugin_string_t expected;
    if (password->len > 0 && portcullis_filter_config_get(username, &expected)) {
        int ok = same(expected.ptr, expected.len, password->ptr, password->len);
        auth_plugin_string_free(&expected);
        if (ok) {
            // The accepted account is the user name; the result takes ownership of it.
            ret->tag = EXPORTS_PORTCULLIS_FILTER_AUTH_AUTH_RESULT_ACCEPT;
            ret->val.accept = *username;
            auth_plugin_string_free(password);
            exports_portcullis_filter_auth_session_info_free(session);
            return;
        }
    }
    ret->tag = EXPORTS_PORTCULLIS_FILTER_AUTH_AUTH_RESULT_REJECT;
    auth_plugin_string_free(username);
    auth_plugin_string_free(password);
    exports_portcullis_filter_auth_session_info_free(session);
}
