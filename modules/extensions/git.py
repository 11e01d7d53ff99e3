"""git as a subprocess, locked down for extension repositories.

Every call runs `git` with:
- no prompts (`GIT_TERMINAL_PROMPT=0`, an empty `GIT_ASKPASS`, no `SSH_ASKPASS`), no credential
  helper (`-c credential.helper=`), stdin closed;
- no hooks and no fsmonitor command from the repository (`-c core.hooksPath=/dev/null`,
  `-c core.fsmonitor=false`);
- transports: `https` only (`-c protocol.allow=never -c protocol.https.allow=always`), plus
  `file` when the runner allows local repositories (a local server); `ext::`, `ssh`, `git://`
  and plain `http` are refused by git itself, after `check_url` refused them here;
- a timeout: the whole process group is killed when it runs out, so a hung transport helper
  cannot keep the call waiting.

Failures are `GitError` (a `UserError`: shown to the user, HTTP 4xx), with git's own message.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from modules.core.errors import ForbiddenError, UserError, ValidationError

CLONE_TIMEOUT_S = 300.0
FETCH_TIMEOUT_S = 120.0
LOCAL_TIMEOUT_S = 30.0
MAX_MESSAGE_CHARS = 2000

_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
# a branch name as `git check-ref-format --branch` would take it, kept conservative
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/+-]{1,200}(?<![./])$")
_SCP_LIKE = re.compile(r"^[^/:]+@[^/:]+:")


class GitError(UserError):
    """A git command failed or timed out; the message says which and why."""

    status_code = 400


class GitTimeout(GitError):
    """A git command ran out of time and was killed."""

    status_code = 504


def is_commit_hash(value: str) -> bool:
    """7 to 40 hex digits: taken as a commit to check out rather than a branch name."""
    return bool(_COMMIT.match(value))


def check_branch(value: str) -> str:
    """A branch name safe to hand to git (no option-like or relative forms); ValidationError if not."""
    value = value.strip()
    if not _BRANCH.match(value) or value.endswith(".lock"):
        raise ValidationError(f"not a valid branch name: {value!r}")
    return value


def is_local_url(url: str) -> bool:
    """A `file://` URL or an absolute local path."""
    return url.startswith("file://") or url.startswith("/")


def check_url(url: str, *, allow_local: bool) -> str:
    """The URL, stripped, if extensions may be cloned from it; otherwise a typed error.

    `https://host/...` always; a local path or `file://` only when `allow_local` (the server is
    local: tests install from a bare repository on disk); everything else (`http://`, `git://`,
    `ssh://`, `user@host:path`, `ext::...`, relative paths, option-like values) is refused.
    """
    url = (url or "").strip()
    if not url:
        raise ValidationError("no URL given")
    if "\x00" in url or any(ch in url for ch in "\r\n\t") or url.startswith("-"):
        raise ValidationError("the URL contains characters git must not see")
    if "::" in url.split("/", 1)[0] or url.lower().startswith("ext::"):
        raise ValidationError("git remote helpers (ext::, fd::, ...) are not allowed; use an https:// URL")
    if is_local_url(url):
        if not allow_local:
            raise ForbiddenError(
                "local repository paths are only allowed when the server is local; use an https:// URL"
            )
        path = url[len("file://") :] if url.startswith("file://") else url
        if not path.startswith("/"):
            raise ValidationError("a file:// URL must hold an absolute path")
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not parts.hostname:
            raise ValidationError("the https:// URL has no host")
        return url
    if _SCP_LIKE.match(url):
        raise ValidationError("ssh (user@host:path) URLs are not allowed; use an https:// URL")
    if scheme:
        raise ValidationError(f"{scheme}:// URLs are not allowed; use an https:// URL")
    raise ValidationError("not a URL: use an https:// URL")


def redact_url(url: str | None) -> str:
    """The URL without a password or token, for logs and messages."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


@dataclass(frozen=True)
class CommitInfo:
    """What the Installed table shows for one checkout."""

    commit_hash: str
    commit_date: int | None  # committer time, seconds since the epoch (A1111's `committed_date`)
    branch: str | None  # None when HEAD is detached
    remote: str | None  # the URL of `origin`, None when there is none


@dataclass(frozen=True)
class GitRunner:
    """Runs git with the locked-down configuration above."""

    allow_local: bool = False
    git: str = "git"
    clone_timeout_s: float = CLONE_TIMEOUT_S
    fetch_timeout_s: float = FETCH_TIMEOUT_S
    local_timeout_s: float = LOCAL_TIMEOUT_S

    def config_args(self) -> list[str]:
        args = [
            "-c",
            "credential.helper=",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.askPass=",
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
        ]
        if self.allow_local:
            args += ["-c", "protocol.file.allow=always"]
        return args

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        for key in ("SSH_ASKPASS", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND", "GIT_EXEC_PATH", "GIT_DIR"):
            env.pop(key, None)
        env.update(
            {
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_ASKPASS": "",
                "GCM_INTERACTIVE": "never",
                "GIT_PROTOCOL_FROM_USER": "0",
                "LC_ALL": "C",
            }
        )
        return env

    def run(self, args: Sequence[str], *, cwd: Path | None = None, timeout: float | None = None) -> str:
        """`git <config> <args>` -> stdout (stripped); GitError with git's message when it fails."""
        limit = self.local_timeout_s if timeout is None else timeout
        command = [self.git, *self.config_args(), *args]
        what = "git " + " ".join(a for a in args if not is_local_url(a) and "://" not in a)
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: a timeout kills the helpers too
            )
        except OSError as exc:
            raise GitError(f"cannot run git ({self.git}): {exc}") from None
        try:
            out, err = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise GitTimeout(f"{what}: timed out after {limit:g} s (killed)") from None
        if process.returncode != 0:
            text = (err or out).decode("utf-8", errors="replace")
            lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Cloning into")]
            message = "\n".join(lines) or f"exit code {process.returncode}"
            raise GitError(f"{what} failed: {message[-MAX_MESSAGE_CHARS:]}")
        return out.decode("utf-8", errors="replace").strip()

    # --- the operations the manager needs ---

    def clone(self, url: str, target: Path, *, branch: str | None = None) -> None:
        """A blobless clone (`--filter=blob:none`) with submodules, of `branch` or the default one."""
        url = check_url(url, allow_local=self.allow_local)
        args = ["clone", "--filter=blob:none", "--recurse-submodules", "--no-local"]
        if branch:
            args += ["--branch", check_branch(branch)]
        self.run([*args, "--", url, str(target)], timeout=self.clone_timeout_s)

    def fetch(self, repo: Path) -> None:
        """`git fetch` of origin (checked like a clone URL first)."""
        remote = self.remote_url(repo)
        if remote is None:
            raise GitError(f"{repo.name} has no origin remote to fetch from")
        check_url(remote, allow_local=self.allow_local)
        args = ["fetch", "--prune", "--recurse-submodules=on-demand", "origin"]
        self.run(args, cwd=repo, timeout=self.fetch_timeout_s)

    def rev_parse(self, repo: Path, ref: str = "HEAD") -> str:
        """The full hash of the commit `ref` names (GitError when it names none)."""
        return self.run(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], cwd=repo)

    def remote_url(self, repo: Path) -> str | None:
        try:
            url = self.run(["config", "--get", "remote.origin.url"], cwd=repo)
        except GitError:
            return None
        return url or None

    def current_branch(self, repo: Path) -> str | None:
        """The checked-out branch, None when HEAD is detached."""
        try:
            name = self.run(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=repo)
        except GitError:
            return None
        return name or None

    def upstream_ref(self, repo: Path, branch: str | None) -> str:
        """What an update moves to: `origin/<branch>`, or origin's default branch when detached."""
        return f"origin/{branch}" if branch else "origin/HEAD"

    def reset_hard(self, repo: Path, ref: str) -> None:
        if ref.startswith("-"):
            raise ValidationError(f"not a git reference: {ref!r}")
        self.run(["reset", "--hard", ref, "--"], cwd=repo, timeout=self.fetch_timeout_s)
        self.run(["submodule", "update", "--init", "--recursive"], cwd=repo, timeout=self.fetch_timeout_s)

    def checkout_commit(self, repo: Path, commit: str) -> None:
        """Detach HEAD at `commit` (fetched first if the clone does not have it)."""
        if not is_commit_hash(commit):
            raise ValidationError(f"not a commit hash: {commit!r}")
        try:
            self.rev_parse(repo, commit)
        except GitError:
            self.run(["fetch", "origin", commit], cwd=repo, timeout=self.fetch_timeout_s)
        self.run(["checkout", "--detach", commit, "--"], cwd=repo, timeout=self.fetch_timeout_s)
        self.run(["submodule", "update", "--init", "--recursive"], cwd=repo, timeout=self.fetch_timeout_s)

    def info(self, repo: Path) -> CommitInfo | None:
        """Commit, date, branch and remote of a checkout; None when `repo` is not a git checkout."""
        if not (repo / ".git").exists():
            return None
        try:
            line = self.run(["log", "-1", "--format=%H %ct"], cwd=repo)
        except GitError:
            return None
        commit, _, stamp = line.partition(" ")
        return CommitInfo(
            commit_hash=commit,
            commit_date=int(stamp) if stamp.isdigit() else None,
            branch=self.current_branch(repo),
            remote=self.remote_url(repo),
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, OSError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        process.communicate(timeout=5)
