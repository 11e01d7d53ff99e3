# shellcheck shell=bash
# Shared install logic for webui.sh, test.sh and .ci/run (sourced, never executed).
#
#   source scripts/prepare_env.sh
#   sdw_defaults                      # venv_dir / python_cmd / TORCH_COMMAND defaults
#   sdw_prepare_env [--with-test-deps] [--with-ray] [--skip-install] [--reinstall] [--reinstall-torch]
#   "$python" ...                     # the interpreter the app / tests run with
#
# Inputs: SDW_ROOT (repo root, holds pyproject.toml; relative venv_dir is resolved against it),
# venv_dir (default "venv"; "-" = no venv, use $python_cmd as is), python_cmd (default python3),
# TORCH_COMMAND (default: pinned CPU/CUDA wheels from PyPI), all settable in webui-user.sh.
#
# Install steps: (1) "$python" -m $TORCH_COMMAND, (2) pip install of [project].dependencies from
# pyproject.toml, (3) the extras asked for from [project.optional-dependencies]: --with-ray the
# `ray` extra (webui.sh --ray), --with-test-deps the `test` extra and `ray` (tests/serve runs a
# local Ray cluster). No editable install and no build backend: the dependency strings are read
# with tomllib.
#
# A stamp file (venv/.sd-webui-install-stamp) records a sha256 of (pyproject dependency lists +
# TORCH_COMMAND + the interpreter's version) and which extras were installed. Later runs skip
# every step when the hash matches (installing only extras asked for that are missing); a changed
# hash redoes all of them.

SDW_DEFAULT_TORCH_COMMAND="pip install torch==2.14.1 torchvision==0.29.1"

sdw_log() { printf 'sd-webui: %s\n' "$*" >&2; }

sdw_defaults() {
    : "${SDW_ROOT:?SDW_ROOT must be set to the repository root}"
    if [[ -z "${venv_dir:-}" ]]; then venv_dir="venv"; fi
    if [[ -z "${python_cmd:-}" ]]; then python_cmd="python3"; fi
    if [[ -z "${TORCH_COMMAND:-}" ]]; then TORCH_COMMAND="$SDW_DEFAULT_TORCH_COMMAND"; fi
    export venv_dir python_cmd TORCH_COMMAND
    export PIP_DISABLE_PIP_VERSION_CHECK="${PIP_DISABLE_PIP_VERSION_CHECK:-1}"
}

# Reads pyproject.toml. Usage: python -c "$_SDW_PYPROJECT_PY" hash|deps|extra ...
# (tomllib is 3.11+; on 3.10 pip's vendored tomli reads the same format.)
read -r -d '' _SDW_PYPROJECT_PY <<'PY' || true
import hashlib
import json
import sys

try:
    import tomllib
except ModuleNotFoundError:
    from pip._vendor import tomli as tomllib

command, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    project = tomllib.load(f)["project"]
deps = project.get("dependencies", [])
optional = project.get("optional-dependencies", {})
if command == "hash":
    blob = json.dumps(
        {
            "dependencies": deps,
            "optional-dependencies": optional,
            "torch_command": sys.argv[3],
            "python": sys.version,
        },
        sort_keys=True,
    )
    print(hashlib.sha256(blob.encode()).hexdigest())
elif command == "deps":
    print("\n".join(deps))
elif command == "extra":
    if sys.argv[3] not in optional:
        sys.exit(f"pyproject.toml has no [project.optional-dependencies].{sys.argv[3]}")
    print("\n".join(optional[sys.argv[3]]))
else:
    sys.exit(f"unknown command {command!r}")
PY

# Sets the globals: python (interpreter), _sdw_stamp, _sdw_lock. Creates the venv when missing.
_sdw_resolve_python() {
    if ! command -v "$python_cmd" >/dev/null 2>&1; then
        sdw_log "ERROR: python_cmd '$python_cmd' not found; install Python 3.10+ or set python_cmd in webui-user.sh"
        return 1
    fi
    if ! "$python_cmd" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        sdw_log "ERROR: $python_cmd is $("$python_cmd" -V 2>&1); sd-webui needs Python 3.10 or newer"
        return 1
    fi
    if [[ "$venv_dir" == "-" ]]; then
        python="$python_cmd"
        # No venv to keep the stamp in: keep it in the user's cache, one per (checkout, python).
        local cache_dir key
        cache_dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sd-webui"
        mkdir -p "$cache_dir" || return 1
        key="$(printf '%s|%s' "$SDW_ROOT" "$(command -v "$python_cmd")" | cksum | cut -d' ' -f1)"
        _sdw_stamp="$cache_dir/install-stamp-$key"
        _sdw_lock="$cache_dir/install-$key.lock"
        return 0
    fi
    local venv="$venv_dir"
    [[ "$venv" == /* ]] || venv="$SDW_ROOT/$venv"
    if [[ ! -x "$venv/bin/python" ]]; then
        sdw_log "creating virtual environment in $venv with $python_cmd"
        if ! "$python_cmd" -m venv "$venv" || [[ ! -x "$venv/bin/python" ]]; then
            sdw_log "ERROR: could not create a venv in $venv (on Debian/Ubuntu: apt install python3-venv)"
            return 1
        fi
    fi
    python="$venv/bin/python"
    # Light activation, so that child processes (extension installers, git hooks) find the venv.
    export VIRTUAL_ENV="$venv"
    case ":$PATH:" in
        *":$venv/bin:"*) ;;
        *) export PATH="$venv/bin:$PATH" ;;
    esac
    _sdw_stamp="$venv/.sd-webui-install-stamp"
    _sdw_lock="$venv/.sd-webui-install.lock"
}

_sdw_pip_install_list() {  # $1 = what (for messages), $2 = newline-separated requirement list
    local what="$1" list="$2"
    local -a reqs=()
    local line
    while IFS= read -r line; do
        [[ -n "$line" ]] && reqs+=("$line")
    done <<<"$list"
    if [[ ${#reqs[@]} -eq 0 ]]; then
        sdw_log "no $what to install"
        return 0
    fi
    sdw_log "installing $what: ${reqs[*]}"
    "$python" -m pip install "${reqs[@]}"
}

# Runs the install steps that are needed (or forced). Sets the global $python.
sdw_prepare_env() {
    local extras="" skip=0 reinstall=0 reinstall_torch=0 arg
    for arg in "$@"; do
        case "$arg" in
            --with-test-deps) extras="$extras test ray" ;;
            --with-ray) extras="$extras ray" ;;
            --skip-install) skip=1 ;;
            --reinstall) reinstall=1 ;;
            --reinstall-torch) reinstall_torch=1 ;;
            *) sdw_log "sdw_prepare_env: unknown option $arg"; return 2 ;;
        esac
    done
    _sdw_resolve_python || return 1
    if [[ $skip -eq 1 ]]; then
        [[ -f "$_sdw_stamp" ]] || sdw_log "warning: skipping install, but nothing was ever installed for $python"
        return 0
    fi

    local pyproject="$SDW_ROOT/pyproject.toml" hash
    hash="$("$python" -c "$_SDW_PYPROJECT_PY" hash "$pyproject" "$TORCH_COMMAND")" || {
        sdw_log "ERROR: could not read $pyproject"
        return 1
    }

    # One installer at a time per environment (webui.sh and test.sh may share the venv).
    local lock_fd=""
    if command -v flock >/dev/null 2>&1 && exec {lock_fd}>>"$_sdw_lock"; then
        flock "$lock_fd"
    fi
    local rc=0
    _sdw_install_locked "$hash" "$extras" "$reinstall" "$reinstall_torch" || rc=$?
    if [[ -n "$lock_fd" ]]; then exec {lock_fd}>&-; fi
    return "$rc"
}

_sdw_has_word() {  # $1 = word, $2 = space-separated list
    [[ " $2 " == *" $1 "* ]]
}

_sdw_install_locked() {
    local hash="$1" wanted="$2" reinstall="$3" reinstall_torch="$4"
    local pyproject="$SDW_ROOT/pyproject.toml"
    local old_hash="" old_extras="" key value
    if [[ -f "$_sdw_stamp" ]]; then
        while IFS='=' read -r key value; do
            case "$key" in
                hash) old_hash="$value" ;;
                extras) old_extras="$value" ;;
            esac
        done <"$_sdw_stamp"
    fi

    # extras to install now, and those the environment will have afterwards
    local do_torch=0 do_deps=0 have="" todo="" extra
    local -a words
    if [[ "$old_hash" != "$hash" || $reinstall -eq 1 ]]; then
        do_torch=1; do_deps=1
        [[ "$old_hash" == "$hash" ]] && have="$old_extras"
        for extra in $wanted; do
            _sdw_has_word "$extra" "$todo" || todo="$todo $extra"
        done
    else
        have="$old_extras"
        for extra in $wanted; do
            _sdw_has_word "$extra" "$have" || _sdw_has_word "$extra" "$todo" || todo="$todo $extra"
        done
    fi
    [[ $reinstall_torch -eq 1 ]] && do_torch=1

    if [[ $do_torch -eq 0 && $do_deps -eq 0 && -z "${todo// /}" ]]; then
        return 0
    fi
    if [[ -z "$old_hash" ]]; then
        sdw_log "first run: installing torch and dependencies into $python"
    elif [[ "$old_hash" != "$hash" ]]; then
        sdw_log "dependencies, TORCH_COMMAND or Python changed since the last install: reinstalling"
    fi
    # The stamp is removed first and written last, so an interrupted install is redone.
    rm -f "$_sdw_stamp"

    if [[ $do_torch -eq 1 ]]; then
        sdw_log "installing torch: $python -m $TORCH_COMMAND"
        # eval: TORCH_COMMAND is a shell fragment (it may quote an --index-url), as in A1111.
        eval "\"\$python\" -m $TORCH_COMMAND" || {
            sdw_log "ERROR: TORCH_COMMAND failed: $TORCH_COMMAND"
            return 1
        }
    fi
    local list
    if [[ $do_deps -eq 1 ]]; then
        list="$("$python" -c "$_SDW_PYPROJECT_PY" deps "$pyproject")" || return 1
        _sdw_pip_install_list "dependencies" "$list" || {
            sdw_log "ERROR: installing the dependencies from pyproject.toml failed"
            return 1
        }
    fi
    for extra in $todo; do
        list="$("$python" -c "$_SDW_PYPROJECT_PY" extra "$pyproject" "$extra")" || return 1
        _sdw_pip_install_list "$extra dependencies" "$list" || {
            sdw_log "ERROR: installing the $extra dependencies from pyproject.toml failed"
            return 1
        }
        _sdw_has_word "$extra" "$have" || have="$have $extra"
    done

    read -r -a words <<<"$have"
    have="${words[*]}"  # trimmed, single spaces
    printf 'hash=%s\nextras=%s\n' "$hash" "$have" >"$_sdw_stamp" || return 1
    sdw_log "install complete (stamp: $_sdw_stamp)"
}
