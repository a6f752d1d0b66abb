#!/bin/sh
# Builds the Python plugins with a pinned componentize-py, installed from PyPI into a virtual
# environment under the workspace's target directory (nothing global is touched).
#
# Usage: plugins/python/build.sh [OUT_DIR]        (default: target/plugins/python)
#
# Each plugin is a folder with an app.py and a line `# world: NAME` naming its WIT world;
# the component is OUT_DIR/<folder name with - as _>.wasm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/target/plugins/python}
venv=$root/target/toolchains/python
version=0.25.1
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $version"; then
    echo "installing componentize-py $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "componentize-py==$version"
fi
mkdir -p "$out"
for app in "$here"/*/app.py "$root"/plugins/testing/python-*/app.py; do
    [ -f "$app" ] || continue
    dir=$(dirname "$app")
    name=$(basename "$dir" | tr - _)
    world=$(sed -n 's/^# world: *//p' "$app" | head -n 1)
    [ -n "$world" ] || { echo "$app: no '# world: NAME' line" >&2; exit 1; }
    target="$out/$name.wasm"
    # Rebuild only when the source or the WIT changed.
    if [ -f "$target" ] && [ -z "$(find "$app" "$root/wit" -newer "$target" 2>/dev/null | head -n 1)" ]; then
        continue
    fi
    work=$(mktemp -d)
    cp "$app" "$work/"
    (cd "$work" && "$venv/bin/componentize-py" -d "$root/wit" -w "$world" componentize app -o "$target.tmp" >/dev/null)
    rm -rf "$work"
    mv "$target.tmp" "$target"
    echo "built $target"
done
