#!/usr/bin/env bash
# Run ansible-test (sanity, then units) on this collection without docker.
#
#   scripts/ansible-test.sh                 # sanity + units
#   scripts/ansible-test.sh sanity [ARGS]   # only sanity; ARGS go to ansible-test (e.g. --test pylint)
#   scripts/ansible-test.sh units [ARGS]    # only the plugins' unit tests
#
# It runs over the collection as Galaxy and certification get it: the tarball that
# `ansible-galaxy collection build` makes (galaxy.yml's build_ignore decides what ships), unpacked
# at .../ansible_collections/quorum/rollout/ in a temporary directory that is removed at exit (KEEP=1
# keeps it; its path is printed). Every shipped file is checked, the agent's source included; what
# build_ignore leaves out (Makefile, bench/, scripts/, the checkout's pytest suites) is linted by ruff
# (`make lint`). Exceptions are tests/sanity/ignore-*.txt entries, each with its reason.
#
# Sanity runs each test in a virtualenv of its own, bootstrapped with pip's get-pip script,
# which ansible-test downloads from a host this network does not reach. A stand-in that
# uses the interpreter's bundled ensurepip and then pip from the package index is created
# in ansible-test's cache when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
ANSIBLE_TEST="$VENV_BIN/ansible-test"
[ -x "$ANSIBLE_TEST" ] || ANSIBLE_TEST="$(command -v ansible-test)"

what="${1:-all}"
[ $# -gt 0 ] && shift

# -- pip bootstrap stand-in ---------------------------------------------------------------
GET_PIP="$HOME/.ansible/test/cache/get_pip_24_2.py"
if [ ! -s "$GET_PIP" ]; then
    mkdir -p "$(dirname "$GET_PIP")"
    cat > "$GET_PIP" <<'PY'
import subprocess, sys  # stand-in for get-pip.py (made by quorum.rollout's scripts/ansible-test.sh)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
    echo "ansible-test.sh: created pip bootstrap stand-in $GET_PIP"
fi

# -- collection tree: the built tarball ----------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/quorum-rollout-test.XXXXXX")"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "ansible-test.sh: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
DEST="$TMP/ansible_collections/quorum/rollout"
mkdir -p "$DEST" "$TMP/dist"
"$VENV_BIN/ansible-galaxy" collection build --output-path "$TMP/dist" "$ROOT" >/dev/null
tar -xzf "$TMP"/dist/quorum-rollout-*.tar.gz -C "$DEST"
# ansible-test looks at git to list the collection's files; give it a repository of its own.
(
    cd "$DEST"
    git init -q
    echo tests/output/ > .git/info/exclude  # ansible-test's own output (.gitignore does not ship)
    git add -A
    git -c user.name=ansible-test -c user.email=ansible-test@localhost commit -q -m snapshot --no-verify
)

cd "$DEST"
status=0
if [ "$what" = all ] || [ "$what" = sanity ]; then
    echo "== ansible-test sanity (python $PYTHON_VERSION) in $DEST"
    "$ANSIBLE_TEST" sanity --venv --python "$PYTHON_VERSION" --color no "$@" || status=$?
fi
if [ "$what" = all ] || [ "$what" = units ]; then
    echo "== ansible-test units (python $PYTHON_VERSION)"
    "$ANSIBLE_TEST" units --local --requirements --python "$PYTHON_VERSION" --color no "$@" tests/unit/plugins/ || status=$?
fi
exit $status
