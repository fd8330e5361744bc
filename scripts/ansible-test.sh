#!/usr/bin/env bash
# Run ansible-test (sanity, then units) on this collection without docker.
#
#   scripts/ansible-test.sh                 # sanity + units
#   scripts/ansible-test.sh sanity [ARGS]   # only sanity; ARGS go to ansible-test (e.g. --test pylint)
#   scripts/ansible-test.sh units [ARGS]    # only the plugins' unit tests
#
# Sanity covers the Ansible content (plugins, roles, playbooks, meta, changelogs, the plugins'
# unit tests, this script). It leaves out the agent: agent/ is a separate Python distribution
# (agent/pyproject.toml, linted by ruff with its own rules, tested by tests/unit/test_*.py,
# tests/integration/*.py, tests/e2e), the local fleet library scripts/localfleet/ (a developer
# tool, not shipped) and the pytest layers linted by ruff (tests/playbooks and tests/chaos too): Ansible's module
# rules (Python 3.8 targets, no `_` names, ...) do not apply to them. SANITY_ALL=1 checks every
# file instead.
#
# ansible-test needs the collection at .../ansible_collections/quorum/rollout/, so the files
# git knows about (tracked, plus new files not ignored) are copied into a temporary tree
# that is removed at exit. Set KEEP=1 to keep it (its path is printed).
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

# -- collection tree -------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/quorum-rollout-test.XXXXXX")"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "ansible-test.sh: kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
DEST="$TMP/ansible_collections/quorum/rollout"
mkdir -p "$DEST"
(
    cd "$ROOT"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        if [ -e "$f" ]; then printf '%s\0' "$f"; fi  # skip files deleted but not yet committed
    done | tar --null -T - -cf - | tar -xf - -C "$DEST"
)
# ansible-test looks at git to list the collection's files; give it a repository of its own.
(
    cd "$DEST"
    git init -q
    git add -A
    git -c user.name=ansible-test -c user.email=ansible-test@localhost commit -q -m snapshot --no-verify
)

cd "$DEST"
targets=()
if [ "${SANITY_ALL:-0}" != 1 ]; then
    while IFS= read -r f; do targets+=("$f"); done < <(
        git ls-files | grep -Ev '^(agent|bench|scripts/localfleet)/|^tests/(unit|playbooks|integration|chaos|e2e|support)/' || true
        git ls-files 'tests/unit/plugins/*' 'tests/integration/targets/*'
    )
fi
status=0
if [ "$what" = all ] || [ "$what" = sanity ]; then
    echo "== ansible-test sanity (python $PYTHON_VERSION) in $DEST"
    "$ANSIBLE_TEST" sanity --venv --python "$PYTHON_VERSION" --color no "$@" "${targets[@]}" || status=$?
fi
if [ "$what" = all ] || [ "$what" = units ]; then
    echo "== ansible-test units (python $PYTHON_VERSION)"
    "$ANSIBLE_TEST" units --local --requirements --python "$PYTHON_VERSION" --color no "$@" tests/unit/plugins/ || status=$?
fi
exit $status
