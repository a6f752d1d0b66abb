#!/bin/sh
# Builds the JavaScript plugins with the pinned componentize-js (package-lock.json), installed
# with `npm ci` under the workspace's target directory (nothing global is touched).
#
# Usage: plugins/javascript/build.sh [OUT_DIR]    (default: target/plugins/javascript)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/plugins/javascript}
tools=$root/target/toolchains/javascript
mkdir -p "$tools" "$out"
if ! cmp -s "$here/package-lock.json" "$tools/package-lock.json" || [ ! -d "$tools/node_modules" ]; then
    echo "installing componentize-js into $tools"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
cp "$here/build.mjs" "$tools/"
cd "$tools" && node build.mjs "$here" "$root/wit" "$out"
