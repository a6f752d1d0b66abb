#!/bin/sh
# Builds <folder name>.wasm from plugin.js with the componentize-js pinned in
# package-lock.json, installed with `npm ci` here (or in PORTCULLIS_JS_TOOLS, a directory
# whose node_modules already holds it).
set -eu
cd "$(dirname "$0")"
tools=${PORTCULLIS_JS_TOOLS:-$(pwd)}
if [ ! -d "$tools/node_modules/@bytecodealliance/componentize-js" ]; then
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
cp build.mjs "$tools/.build-starter.mjs"
node "$tools/.build-starter.mjs" "$(pwd)"
