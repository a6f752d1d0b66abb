#!/bin/sh
# Builds <folder name>.wasm from plugin.js with the componentize-js pinned in
# package-lock.json, installed with `npm ci` here (or in PORTCULLIS_JS_TOOLS, a directory
# whose node_modules already holds it).
set -eu
# Prerequisites first: a build must not run for minutes before finding one missing.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "build.sh: Node.js (18 or later) and npm are needed; install them with:" >&2
    echo "  apt-get install -y --no-install-recommends nodejs npm" >&2
    exit 1
fi
cd "$(dirname "$0")"
# The WIT contract: this folder's own wit/, else the repository's (building in place),
# else the one the portcullis binary carries.
if [ ! -d wit ]; then
    if [ -f ../../../wit/worlds.wit ]; then cp -r ../../../wit wit
    elif command -v portcullis >/dev/null 2>&1; then portcullis plugin wit wit
    else echo "no wit/ here: copy the contract in, or put portcullis on PATH" >&2; exit 1
    fi
fi
tools=${PORTCULLIS_JS_TOOLS:-$(pwd)}
if [ ! -d "$tools/node_modules/@bytecodealliance/componentize-js" ]; then
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
cp build.mjs "$tools/.build-starter.mjs"
node "$tools/.build-starter.mjs" "$(pwd)"
