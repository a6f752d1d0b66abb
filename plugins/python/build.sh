#!/bin/sh
# Builds the Python plugins with the Python starter's own build script
# (plugins/templates/python/build.sh), its pinned componentize-py installed once into a
# virtual environment under the workspace's target directory (nothing global is touched).
#
# Usage: plugins/python/build.sh [OUT_DIR]        (default: target/plugins/python)
#
# Each plugin is a folder with an app.py whose first line names its WIT world
# (`# world: NAME`); the component is OUT_DIR/<folder name with - as _>.wasm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/plugins/python}
PORTCULLIS_PYTHON_VENV=$root/target/toolchains/python
export PORTCULLIS_PYTHON_VENV
mkdir -p "$out"
for app in "$here"/*/app.py "$root"/plugins/testing/python-*/app.py; do
    [ -f "$app" ] || continue
    dir=$(dirname "$app")
    target="$out/$(basename "$dir" | tr - _).wasm"
    # Rebuild only when the source or the WIT changed.
    if [ -f "$target" ] && [ -z "$(find "$app" "$root/wit" -newer "$target" 2>/dev/null | head -n 1)" ]; then
        continue
    fi
    "$root/plugins/templates/python/build.sh" "$dir" "$target"
done
