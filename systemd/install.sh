#!/usr/bin/env bash
# Install sd-webui as a systemd service (idempotent: run it again after moving the checkout or
# to repair permissions; an existing /etc/sd-webui/sd-webui.env is never overwritten).
#
#   sudo systemd/install.sh [--dry-run] [--enable]
#
#   --dry-run   print what would be done, change nothing (no root needed)
#   --enable    also `systemctl enable --now sd-webui` (otherwise the last step is printed)
#
# What it does:
#   1. the system user and group `sd-webui` (home /var/lib/sd-webui, no login shell);
#   2. /var/lib/sd-webui (0750, owned by sd-webui): venv, models, outputs, settings, caches;
#   3. /etc/sd-webui/sd-webui.env (0640, root:sd-webui: it may hold --api-auth credentials), from
#      systemd/sd-webui.env.example, and /etc/sd-webui/auth.txt (0640, root:sd-webui: the login
#      "admin" with a random password, printed once), each only when it does not exist yet;
#   4. /etc/systemd/system/sd-webui.service from systemd/sd-webui.service, with /opt/sd-webui
#      replaced by this checkout's path; then `systemctl daemon-reload`.
# The checkout itself stays owned by whoever cloned it; the service only reads it.

set -euo pipefail

SERVICE=sd-webui
SERVICE_USER=sd-webui  # the unit's User= and Group=
STATE_DIR=/var/lib/sd-webui
ETC_DIR=/etc/sd-webui
UNIT_DIR=/etc/systemd/system
CHECKOUT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"

dry_run=0
enable=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        --enable) enable=1 ;;
        -h | --help)
            sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "install.sh: unknown option $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

run() {  # print the command; run it unless --dry-run
    printf '+ %s\n' "$*"
    if [[ $dry_run -eq 0 ]]; then
        "$@"
    fi
}

if [[ $dry_run -eq 0 && "$(id -u)" -ne 0 ]]; then
    echo "install.sh: run it as root (sudo), or with --dry-run to see what it would do" >&2
    exit 1
fi
if [[ "$CHECKOUT" == /home/* || "$CHECKOUT" == /root/* || "$CHECKOUT" == /root ]]; then
    echo "install.sh: warning: $CHECKOUT is hidden from the service by ProtectHome=yes;" \
        "move the checkout (e.g. to /opt/sd-webui) or relax ProtectHome= in a drop-in" >&2
fi

# 1. user and group
if getent passwd "$SERVICE_USER" >/dev/null; then
    echo "= user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
fi

# 2. state directory
run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"

# 3. environment file
run install -d -m 0755 "$ETC_DIR"
if [[ -e "$ETC_DIR/$SERVICE.env" ]]; then
    echo "= $ETC_DIR/$SERVICE.env exists (kept)"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$CHECKOUT/systemd/$SERVICE.env.example" "$ETC_DIR/$SERVICE.env"
fi

# 3b. the logins file named by the example's --gradio-auth-path: one login with a random password
if [[ -e "$ETC_DIR/auth.txt" ]]; then
    echo "= $ETC_DIR/auth.txt exists (kept)"
else
    printf '+ write %s (login "admin" with a random password, 0640 root:%s)\n' "$ETC_DIR/auth.txt" "$SERVICE_USER"
    if [[ $dry_run -eq 0 ]]; then
        password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=\n')"
        (umask 077 && printf 'admin:%s\n' "$password" >"$ETC_DIR/auth.txt")
        chown "root:$SERVICE_USER" "$ETC_DIR/auth.txt"
        chmod 0640 "$ETC_DIR/auth.txt"
        echo "  login for the UI and the API: admin / $password (stored in $ETC_DIR/auth.txt)"
    fi
fi

# 4. the unit, pointed at this checkout
unit_text="$(sed "s#/opt/sd-webui#$CHECKOUT#g" "$CHECKOUT/systemd/$SERVICE.service")"
if [[ -f "$UNIT_DIR/$SERVICE.service" ]] && [[ "$(cat "$UNIT_DIR/$SERVICE.service")" == "$unit_text" ]]; then
    echo "= $UNIT_DIR/$SERVICE.service is up to date"
else
    printf '+ write %s (from systemd/%s.service, checkout %s)\n' "$UNIT_DIR/$SERVICE.service" "$SERVICE" "$CHECKOUT"
    if [[ $dry_run -eq 0 ]]; then
        tmp="$(mktemp "$UNIT_DIR/.$SERVICE.service.XXXXXX")"
        printf '%s\n' "$unit_text" >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$UNIT_DIR/$SERVICE.service"
    fi
fi
run systemctl daemon-reload

if [[ $enable -eq 1 ]]; then
    run systemctl enable --now "$SERVICE"
else
    echo "next: edit $ETC_DIR/$SERVICE.env, then: systemctl enable --now $SERVICE; journalctl -u $SERVICE -f"
fi
