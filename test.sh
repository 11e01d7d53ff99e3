#!/usr/bin/env bash
# Runs the test suite: ./test.sh [pytest args...]   (default args come from pyproject.toml)
#
#   ./test.sh                         everything (what CI runs, as ./test.sh -q): the non-browser
#                                     tests on two workers and, beside them, the browser tests
#   ./test.sh -m "not browser"        the fast lane: all but the Chromium-driven UI tests
#   ./test.sh -m "not browser and not slow"   faster still: also skips the server-process tests
#   ./test.sh -m browser              only the browser tests (they share one server and one Chromium)
#   ./test.sh tests/ui/test_txt2img_browser.py::test_generate_interrupt_switch_checkpoint_and_screenshot
#
# Prepares the same venv as webui.sh, through the same install logic (scripts/prepare_env.sh),
# plus the "test" extra of pyproject.toml. venv_dir, python_cmd and TORCH_COMMAND are read from
# webui-user.sh when present, so the tests run in the app's own environment. Works as root (it is
# not the server). Exit code = pytest's.

SDW_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)" || exit 1
export SDW_ROOT
cd -- "$SDW_ROOT" || exit 1

if [[ -f "$SDW_ROOT/webui-user.sh" ]]; then
    # shellcheck source=/dev/null
    source "$SDW_ROOT/webui-user.sh"
fi
# The suite builds its own server command lines; the user's launch flags must not leak in.
unset COMMANDLINE_ARGS

# shellcheck source=scripts/prepare_env.sh
source "$SDW_ROOT/scripts/prepare_env.sh"
sdw_defaults
sdw_prepare_env --with-test-deps || exit 1

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1

# A whole run (no test paths, -m, -k or -n given) goes in two parts at once: everything but the
# browser tests on two worker processes (pytest-xdist, one test file per worker at a time), and the
# browser tests in one more process (they share one server and one Chromium; two browser processes
# beside the others starved each other's page loads past their timeouts). Any other call is
# one plain pytest run with the arguments given.
whole_run=1
for arg in "$@"; do
    case "$arg" in
        -m|-k|-n|--numprocesses|-m*|-k*|-n*|--numprocesses=*|tests|tests/*|*.py|*::*) whole_run=0 ;;
    esac
done
if [[ $whole_run -eq 0 ]]; then
    exec "$python" -m pytest "$@"
fi
# The browser tests mostly wait (page loads, the server's events), so they run in the background
# beside the others; their output is printed after the first part's. Three processes then run
# torch on the machine's cores: each gets one intra-op thread (unless the caller chose), since
# OpenMP threads that spin-wait on shared cores starve each other and the browser.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
browser_log="$(mktemp "${TMPDIR:-/tmp}/sdw-browser-tests.XXXXXX")" || exit 1
"$python" -m pytest -m browser "$@" >"$browser_log" 2>&1 &
browser_pid=$!
trap 'kill "$browser_pid" 2>/dev/null; rm -f "$browser_log"' INT TERM
"$python" -m pytest -m "not browser" -n 2 --dist loadfile "$@"
rc_fast=$?
wait "$browser_pid"
rc_browser=$?
echo
echo "---- browser tests (run beside the others) ----"
cat "$browser_log"
rm -f "$browser_log"
# exit code 5 ("no tests collected") of one part is fine when the other part ran tests
if [[ $rc_fast -eq 5 && $rc_browser -eq 0 ]] || [[ $rc_fast -eq 0 && $rc_browser -eq 5 ]]; then
    exit 0
fi
[[ $rc_fast -ne 0 ]] && exit "$rc_fast"
exit "$rc_browser"
