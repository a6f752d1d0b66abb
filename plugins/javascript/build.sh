#!/bin/sh
# Builds the JavaScript plugins with the componentize-js the JavaScript starter pins
# (plugins/templates/javascript/package-lock.json, one pin for both), installed with `npm ci`
# under the workspace's target directory (nothing global is touched), and the starter's own
# build.mjs for each plugin.
#
# Usage: plugins/javascript/build.sh [OUT_DIR]    (default: target/plugins/javascript)
#
# Each plugin is a folder with a plugin.js whose first line names its WIT world
# (`// world: NAME`); the component is OUT_DIR/<folder name with - as _>.wasm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
starter=$root/plugins/templates/javascript
out=${1:-$root/target/plugins/javascript}
tools=$root/target/toolchains/javascript
mkdir -p "$tools" "$out"
if ! cmp -s "$starter/package-lock.json" "$tools/package-lock.json" || [ ! -d "$tools/node_modules" ]; then
    echo "installing componentize-js into $tools"
    cp "$starter/package.json" "$starter/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --silent --no-audit --no-fund)
fi
# Run from the toolchain directory, so that the import finds its node_modules.
cp "$starter/build.mjs" "$tools/build.mjs"
for plugin in "$here"/*/plugin.js; do
    [ -f "$plugin" ] || continue
    dir=$(dirname "$plugin")
    target="$out/$(basename "$dir" | tr - _).wasm"
    # Rebuild only when the source or the WIT changed.
    if [ -f "$target" ] && [ -z "$(find "$plugin" "$root/wit" -newer "$target" 2>/dev/null | head -n 1)" ]; then
        continue
    fi
    node "$tools/build.mjs" "$dir" "$root/wit" "$target"
done
