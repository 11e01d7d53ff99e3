"""Start-up security: refuse to serve the network without logins, and keep secrets out of the logs.

`startup_security(settings)` runs in `modules.app.main` once logging is configured, before anything
is built (this module imports the standard library only: the start stays fast). It returns an
exit code (2) when the start must be refused, else None.

* Exposure: a server bound to a non-loopback address (`--listen` = 0.0.0.0, or `--server-name`
  naming a LAN address or name) with no `--api-auth`, `--gradio-auth` or `--gradio-auth-path`
  would let anyone who can reach the port generate, change settings and read every output
  (exposed A1111 servers have been hijacked for exactly this). Such a start is refused with an
  error that spells out the fix, unless `--allow-insecure-listen` (ours) is given; then a loud
  warning is logged and the server starts. `--share` and `--ngrok` open nothing here (they are
  accepted and not acted on), so they expose nothing.
* Secrets: from here on every log record (start-up warnings, `--api-log` lines, tracebacks)
  has the login passwords, the `user:password` entries and the ngrok token replaced by
  `<redacted>` (a logging record factory, `logging.setLogRecordFactory`). Passwords shorter than
  4 characters are replaced only as part of their `user:password` entry (replacing every "pw" in
  the logs would make them unreadable and tell as much).
"""

from __future__ import annotations

import ipaddress
import logging
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from modules.core.errors import SettingsError
from modules.core.settings import REDACTED, Settings

log = logging.getLogger(__name__)

EXIT_REFUSED = 2
MIN_BARE_SECRET = 4


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, `::1`, `[::1]` and 127.0.0.0/8 literals (what a bind address or a Host
    name must be to count as loopback)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_exposed(settings: Settings) -> bool:
    """The server listens on an address other machines can reach."""
    return not is_loopback_host(settings.bind_host)


def has_logins(settings: Settings) -> bool:
    return bool(settings.api_auth or settings.gradio_auth or settings.gradio_auth_path)


def _bind_flag(settings: Settings) -> str:
    if settings.server_name:
        return f"--server-name {settings.server_name}"
    return "--listen"


def refusal_message(settings: Settings) -> str:
    bind = f"{settings.bind_host}:{settings.effective_port}"
    return (
        f"refusing to start: {_bind_flag(settings)} serves {bind} to the network without any login, "
        "so anyone who can reach it could use the UI and the API (generate, change settings, read "
        "outputs, install extensions' requirements). Fix it with one of:\n"
        "  --gradio-auth USER:PASSWORD        (logins for the UI; the API takes them too)\n"
        "  --api-auth USER:PASSWORD           (logins for the API; the UI takes them when no --gradio-auth)\n"
        "  --gradio-auth-path FILE            (a file of USER:PASSWORD lines)\n"
        "or, on a network you trust, keep it open on purpose with --allow-insecure-listen.\n"
        "To serve this machine only, drop --listen / --server-name."
    )


def insecure_warning(settings: Settings) -> str:
    bind = f"{settings.bind_host}:{settings.effective_port}"
    line = "!" * 78
    return (
        f"\n{line}\n!! --allow-insecure-listen: serving {bind} to the network WITHOUT ANY LOGIN.\n"
        "!! Anyone who can reach this port can generate, change settings and read outputs.\n"
        "!! Add --gradio-auth USER:PASSWORD or --api-auth USER:PASSWORD to protect it.\n"
        f"{line}"
    )


def check_exposure(settings: Settings) -> int | None:
    """Exit code 2 (with the reason logged) for an exposed start without logins; None otherwise."""
    if settings.allowed_hosts and is_exposed(settings):
        log.warning("--allowed-hosts: accepted, not acted on (the Host check applies to a loopback-bound server only)")
    if not is_exposed(settings):
        if settings.allow_insecure_listen:
            log.warning("--allow-insecure-listen: accepted, not acted on (the server is bound to loopback)")
        return None
    if has_logins(settings):
        return None
    if settings.allow_insecure_listen:
        log.warning("%s", insecure_warning(settings))
        return None
    log.error("%s", refusal_message(settings))
    return EXIT_REFUSED


# --- secrets out of the logs -----------------------------------------------------------------


def secret_strings(settings: Settings) -> list[str]:
    """What must never appear in a log line: every `user:password` entry, each password of at
    least `MIN_BARE_SECRET` characters, the raw auth flag values and the ngrok token/options.
    Longest first, so an entry is replaced before the password inside it."""
    found: set[str] = set()
    for flag_value in (settings.api_auth, settings.gradio_auth, settings.ngrok, settings.ngrok_options):
        if flag_value:
            found.add(flag_value)
    logins: list[tuple[str, str]] = []
    for read in (settings.api_credentials, settings.gradio_credentials):
        try:
            logins.extend(read())
        except SettingsError:  # an unreadable --gradio-auth-path: reported where it is read
            continue
    for user, password in logins:
        found.add(f"{user}:{password}")
        if len(password) >= MIN_BARE_SECRET:
            found.add(password)
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingRecordFactory:
    """A `logging` record factory that replaces secrets in the message and the traceback text."""

    def __init__(self, previous: Callable[..., logging.LogRecord], secrets: Iterable[str]) -> None:
        self.previous = previous
        self.secrets = tuple(secrets)

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if not self.secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging itself reports it later
            return record
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            cleaned = redact(text, self.secrets)
            if cleaned != text:
                record.exc_text = cleaned
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return record


def install_log_redaction(secrets: Iterable[str]) -> RedactingRecordFactory:
    """Redact `secrets` in every log record from now on (replaces the secrets of an earlier call)."""
    current = logging.getLogRecordFactory()
    previous = current.previous if isinstance(current, RedactingRecordFactory) else current
    factory = RedactingRecordFactory(previous, secrets)
    logging.setLogRecordFactory(factory)
    return factory


def startup_security(settings: Settings) -> int | None:
    """Called by `main` before anything is built: log redaction on, then the exposure check
    (exit code 2 to refuse the start, else None)."""
    install_log_redaction(secret_strings(settings))
    if settings.hide_ui_dir_config:
        log.warning(
            "--hide-ui-dir-config: folder settings are hidden and locked; the img2img and extras "
            "batch-from-directory tabs are not disabled (they read folders inside the data dir only)"
        )
    return check_exposure(settings)
