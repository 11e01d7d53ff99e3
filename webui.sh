#!/usr/bin/env bash
# sd-webui launcher (A1111-style).
#
#   ./webui.sh [-f] [--reinstall] [webui.py flags...]
#
# First run: creates the venv, runs TORCH_COMMAND in it, installs the dependencies listed in
# pyproject.toml. Later runs skip the install while nothing changed (see scripts/prepare_env.sh).
# Variables come from the environment or from webui-user.sh next to this script (template:
# webui-user.sh.example): COMMANDLINE_ARGS, venv_dir, python_cmd, TORCH_COMMAND.
#
# Launcher switches:
#   -f                          allow running as root (consumed here, not passed on)
#   --reinstall                 redo every install step (consumed here, not passed on;
#                               command line only)
#   --reinstall-torch           rerun TORCH_COMMAND              } A1111 flags: also passed on
#   --skip-install              no install step at all           } to webui.py, which accepts
#   --skip-prepare-environment  same as --skip-install           } and ignores them
# The last three are honoured on the command line and in COMMANDLINE_ARGS, as is --ray (a webui.py
# flag: scale-out on Ray Serve), which also installs the `ray` extra of pyproject.toml.
#
# COMMANDLINE_ARGS is exported for webui.py, which appends it to its own argv; it is not put on
# the command line here (it would be applied twice).
#
# Exit code 3 from webui.py means "restart requested": the app is started again (after the
# install check). Under systemd (INVOCATION_ID set) webui.py is exec'd instead and the unit's
# RestartForceExitStatus=3 restarts it.

SDW_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)" || exit 1
export SDW_ROOT

can_run_as_root=0
reinstall=0
args=()
for arg in "$@"; do
    case "$arg" in
        -f) can_run_as_root=1 ;;
        --reinstall) reinstall=1 ;;
        *) args+=("$arg") ;;
    esac
done

if [[ "$(id -u)" -eq 0 && $can_run_as_root -eq 0 ]]; then
    cat >&2 <<'EOF'
sd-webui: ERROR: refusing to run as root.
  webui.sh installs Python packages and serves a web app; run it as a normal user
  (or use the systemd unit in systemd/, which runs as a dedicated user).
  To run as root anyway, pass -f:  ./webui.sh -f [flags...]
EOF
    exit 1
fi

cd -- "$SDW_ROOT" || exit 1

if [[ -f "$SDW_ROOT/webui-user.sh" ]]; then
    # shellcheck source=/dev/null
    source "$SDW_ROOT/webui-user.sh"
fi

# shellcheck source=scripts/prepare_env.sh
source "$SDW_ROOT/scripts/prepare_env.sh"
sdw_defaults

# The app never reaches a model hub; these are defaults the user may override.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export HF_HUB_DISABLE_TELEMETRY="${HF_HUB_DISABLE_TELEMETRY:-1}"

# Launcher flags, from argv and COMMANDLINE_ARGS (plain word split is enough to spot them).
skip_install=0
reinstall_torch=0
with_ray=0
read -r -a cmdline_words <<<"${COMMANDLINE_ARGS:-}"
for arg in "${args[@]}" "${cmdline_words[@]}"; do
    case "$arg" in
        --skip-install | --skip-prepare-environment) skip_install=1 ;;
        --reinstall-torch) reinstall_torch=1 ;;
        --ray) with_ray=1 ;;  # scale-out: also install the `ray` extra of pyproject.toml
    esac
done

# Preload tcmalloc when available (less fragmentation with large model loads), as A1111 does.
if [[ -z "${NO_TCMALLOC:-}" && "${LD_PRELOAD:-}" != *tcmalloc* ]]; then
    ldconfig_bin="$(command -v ldconfig || echo /sbin/ldconfig)"
    tcmalloc="$("$ldconfig_bin" -p 2>/dev/null |
        awk '$1 ~ /^libtcmalloc(_minimal)?\.so\.[0-9]+$/ { print $1; exit }')"
    if [[ -n "$tcmalloc" ]]; then
        export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD:}$tcmalloc"
    fi
fi
# Without tcmalloc, glibc keeps freed model weights in its heap (its mmap threshold grows past
# most tensor sizes), so RAM seems to grow with every checkpoint switch. A fixed 1 MiB
# threshold hands them back at once (bench/bench_load.py: RSS flat over 20 switches instead of
# ~1.7x one model). An existing setting wins.
if [[ "${LD_PRELOAD:-}" != *tcmalloc* && -z "${MALLOC_MMAP_THRESHOLD_+set}" ]]; then
    export MALLOC_MMAP_THRESHOLD_=1048576
fi
# PyTorch's own switch for transparent huge pages on large CPU tensors: fresh weights (a LoRA
# patched in, a model loaded) fault in far faster and CPU steps stop paying for small pages
# (bench/bench_lora.py on 2 cores: UNet step 1.95 -> 1.38 s, LoRA-in-force step ratio 1.32 ->
# 1.13). An existing setting wins (THP_MEM_ALLOC_ENABLE=0 turns it off).
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"

if [[ -n "${COMMANDLINE_ARGS+set}" ]]; then
    export COMMANDLINE_ARGS
fi

while true; do
    prepare_opts=()
    [[ $skip_install -eq 1 ]] && prepare_opts+=(--skip-install)
    [[ $reinstall -eq 1 ]] && prepare_opts+=(--reinstall)
    [[ $reinstall_torch -eq 1 ]] && prepare_opts+=(--reinstall-torch)
    [[ $with_ray -eq 1 ]] && prepare_opts+=(--with-ray)
    sdw_prepare_env "${prepare_opts[@]}" || exit 1
    reinstall=0
    reinstall_torch=0

    if [[ -n "${INVOCATION_ID:-}" ]]; then
        exec "$python" webui.py "${args[@]}"
    fi
    "$python" webui.py "${args[@]}"
    rc=$?
    if [[ $rc -ne 3 ]]; then
        exit "$rc"
    fi
    sdw_log "restart requested (exit code 3): starting again"
done
