#!/bin/sh
# Builds <folder name>.wasm from app.py (whose first line names its world: `# world: NAME`)
# with componentize-py 0.25.1, installed into .venv here (or the one named by
# PORTCULLIS_PYTHON_VENV). Usage: build.sh [PLUGIN_DIR [OUT.wasm]] — by default this folder
# and <folder name>.wasm in it; plugins/python/build.sh uses it for every Python plugin of
# the repository.
set -eu
# Prerequisites first: a build must not run for minutes before finding one missing.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "build.sh: python3 with its venv module is needed; install it with:" >&2
    echo "  apt-get install -y --no-install-recommends python3 python3-venv" >&2
    exit 1
fi
cd "${1:-$(dirname "$0")}"
# The WIT contract: this folder's own wit/, else the repository's (building in place),
# else the one the portcullis binary carries.
if [ -d wit ]; then wit=wit
elif [ -f ../../../wit/worlds.wit ]; then wit=../../../wit
elif command -v portcullis >/dev/null 2>&1; then portcullis plugin wit wit && wit=wit
else echo "no wit/ here: copy the contract in, or put portcullis on PATH" >&2; exit 1
fi
out=${2:-$(pwd)/$(basename "$(pwd)").wasm}
venv=${PORTCULLIS_PYTHON_VENV:-.venv}
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -q "0.25.1"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet componentize-py==0.25.1
fi
world=$(sed -n '1s/^# world: *//p' app.py)
[ -n "$world" ] || { echo "app.py: first line must be '# world: NAME'" >&2; exit 1; }
"$venv/bin/componentize-py" -d "$wit" -w "$world" componentize app -o "$out.tmp" >/dev/null
mv "$out.tmp" "$out"
echo "built $out"
