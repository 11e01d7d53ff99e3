#!/usr/bin/env bash
# Type-checks modules/ with mypy: scripts/typecheck.sh [mypy args...]
#
# Settings (files, strictness, per-module overrides) are in pyproject.toml's [tool.mypy]; the
# mypy version is pinned in its "test" extra. Uses the same venv as test.sh through the same
# install logic (scripts/prepare_env.sh), so it is a no-op install check once the venv is ready.
# CI runs it as its own phase before the tests (.ci/run). Exit code = mypy's (1 on type errors).
# A cold run (no .mypy_cache) analyses torch/diffusers/transformers/gradio too and takes minutes;
# later runs reuse the cache.

SDW_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)" || exit 1
export SDW_ROOT
cd -- "$SDW_ROOT" || exit 1

if [[ -f "$SDW_ROOT/webui-user.sh" ]]; then
    # shellcheck source=/dev/null
    source "$SDW_ROOT/webui-user.sh"
fi

# shellcheck source=scripts/prepare_env.sh
source "$SDW_ROOT/scripts/prepare_env.sh"
sdw_defaults
sdw_prepare_env --with-test-deps || exit 1

exec "$python" -m mypy "$@"
