"""ExtensionManager over real git and a local bare repository: install (default branch, a branch,
a commit), listing with commit and date, install.py only on install/update, updates with a
config-state backup, enable/disable in config.json, the disable flags, the network gate, unsafe
directory names and URLs, git timeouts."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from modules.core.errors import ForbiddenError, NotFoundError, UserError, ValidationError
from modules.core.paths import Paths
from modules.extensions.git import GitRunner, GitTimeout, check_url
from modules.extensions.manager import check_dirname
from tests.extensions.conftest import FIRST_COMMIT_TIME, ExtensionRepo, ManagerFactory, install_runs
from tests.fixtures.extension_repos import add_branch, git


def _tree(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# --- install ------------------------------------------------------------------------------------


def test_install_clones_lists_and_runs_install_py_once(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo, caplog: pytest.LogCaptureFixture
) -> None:
    manager = make_manager()
    with caplog.at_level(logging.INFO, logger="sdw.extensions.audit"):
        result = manager.install_from_url(ext_repo.url)
    target = manager.paths.extensions_dir / "sd-hello"
    assert result.name == "sd-hello" and result.path == target and result.commit_hash == ext_repo.first_commit
    assert (target / "scripts" / "hello.py").read_text() == "VALUE = 1\n"
    assert result.installer is not None and result.installer.ok and "install.py ran in" in result.installer.output
    # install.py ran once, in the extension's folder, with the code's root first on PYTHONPATH
    # (where launch.py is; the data dir may be elsewhere)
    assert install_runs(target) == [str(Path(__file__).resolve().parents[2])]
    assert _tree(manager.paths.tmp_dir) == []  # the clone's tmp folder is gone

    (ext,) = manager.installed()
    assert (ext.name, ext.canonical_name, ext.is_builtin, ext.enabled) == ("sd-hello", "sd-hello", False, True)
    assert ext.remote == ext_repo.url and ext.branch == "main"
    assert ext.commit_hash == ext_repo.first_commit and ext.version == ext_repo.first_commit[:8]
    assert ext.commit_date == FIRST_COMMIT_TIME
    assert ext.has_install_py and not ext.has_requirements and ext.error is None

    audit = [r.getMessage() for r in caplog.records if r.name == "sdw.extensions.audit"]
    assert any(ext_repo.url in line and ext_repo.first_commit in line for line in audit), audit


def test_install_a_branch_and_a_commit(make_manager: ManagerFactory, ext_repo: ExtensionRepo) -> None:
    dev = add_branch(ext_repo.bare, "dev", {"scripts/hello.py": "VALUE = 'dev'\n"})
    second = ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    manager = make_manager()
    with pytest.raises(UserError, match="dev2"):
        manager.install_from_url(ext_repo.url, "dev2", "nope")  # no such branch: git's message
    assert _tree(manager.paths.extensions_dir) == [] and _tree(manager.paths.tmp_dir) == []
    manager.install_from_url(ext_repo.url, "dev", "on-dev")
    manager.install_from_url("file://" + ext_repo.url, ext_repo.first_commit, "pinned")
    by_name = {e.name: e for e in manager.installed()}
    assert by_name["on-dev"].branch == "dev" and by_name["on-dev"].commit_hash == dev
    assert by_name["pinned"].commit_hash == ext_repo.first_commit != second
    assert by_name["pinned"].branch is None  # a detached checkout
    assert (manager.paths.extensions_dir / "pinned" / "scripts" / "hello.py").read_text() == "VALUE = 1\n"


def test_install_py_is_not_run_when_the_manager_is_built_or_lists(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    make_manager().install_from_url(ext_repo.url)
    target = make_manager().paths.extensions_dir / "sd-hello"
    assert len(install_runs(target)) == 1
    again = make_manager()  # the server's next start
    again.installed()
    again.active()
    assert len(install_runs(target)) == 1


def test_a_failing_install_py_is_reported_not_fatal(make_manager: ManagerFactory, tmp_path: Path) -> None:
    from tests.fixtures.extension_repos import make_extension_repo

    bare = make_extension_repo(tmp_path / "r", "broken", {"install.py": "import sys\nprint('boom')\nsys.exit(3)\n"})
    result = make_manager().install_from_url(str(bare))
    assert result.installer is not None and not result.installer.ok and result.installer.returncode == 3
    assert "boom" in result.installer.output and "install.py failed" in result.message
    assert result.path.is_dir()


def test_the_same_url_or_folder_twice_is_refused(make_manager: ManagerFactory, ext_repo: ExtensionRepo) -> None:
    manager = make_manager()
    manager.install_from_url(ext_repo.url)
    with pytest.raises(ValidationError, match="already exists"):
        manager.install_from_url("https://example.invalid/someone/sd-hello.git")  # refused before any clone
    with pytest.raises(ValidationError, match="already installed"):
        manager.install_from_url(ext_repo.url + "/", "", "second-copy")  # same URL, other spelling
    assert [e.name for e in manager.installed()] == ["sd-hello"]


# --- updates ------------------------------------------------------------------------------------


def test_check_and_update_to_a_new_commit_with_a_backup_and_install_py(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    manager = make_manager()
    manager.install_from_url(ext_repo.url)
    target = manager.paths.extensions_dir / "sd-hello"
    (ext,) = manager.check_for_updates()
    assert (ext.can_update, ext.status) == (False, "latest")

    second = ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    (ext,) = manager.check_for_updates()
    assert (ext.can_update, ext.status) == (True, "new commits")
    assert ext.commit_hash == ext_repo.first_commit  # a check changes nothing

    (outcome,) = manager.update(["sd-hello"])
    assert outcome.ok and (outcome.old_commit, outcome.new_commit) == (ext_repo.first_commit, second)
    assert (target / "scripts" / "hello.py").read_text() == "VALUE = 2\n"
    (ext,) = manager.installed()
    assert ext.commit_hash == second and not ext.can_update and ext.status == "latest"
    assert len(install_runs(target)) == 2  # install, then update

    (backup,) = manager.paths.config_states_dir.glob("*_Backup (pre-update).json")
    state = json.loads(backup.read_text(encoding="utf-8"))
    assert state["name"] == "Backup (pre-update)" and isinstance(state["created_at"], float)
    saved = state["extensions"]["sd-hello"]
    assert saved["remote"] == ext_repo.url and saved["branch"] == "main" and saved["enabled"] is True
    assert saved["commit_hash"] == ext_repo.first_commit and saved["commit_date"] == FIRST_COMMIT_TIME

    (again,) = manager.update(["sd-hello"])
    assert again.ok and again.message == "already up to date" and len(install_runs(target)) == 2
    with pytest.raises(NotFoundError):
        manager.update(["not-installed"])


def test_restore_a_config_state_puts_the_commit_and_enabled_flag_back(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    manager = make_manager()
    manager.install_from_url(ext_repo.url)
    saved = manager.save_config_state("before")
    ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    manager.update(["sd-hello"])
    manager.set_enabled(["sd-hello"])
    label = next(s.label for s in manager.list_config_states() if s.path == saved)
    report = manager.restore_config_state(label)
    (ext,) = manager.installed()
    assert ext.commit_hash == ext_repo.first_commit and ext.enabled
    assert report.restored and not report.failed
    assert any("not an A1111 checkout" in line for line in report.not_restored)


def test_update_all_leaves_a_checkout_with_local_changes_alone(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    manager = make_manager("--update-all-extensions")
    make_manager().install_from_url(ext_repo.url)
    target = manager.paths.extensions_dir / "sd-hello"
    (target / "scripts" / "hello.py").write_text("VALUE = 'mine'\n")
    ext_repo.push({"scripts/hello.py": "VALUE = 2\n"})
    (outcome,) = manager.update_all()
    assert not outcome.ok and "uncommitted" in outcome.message
    assert (target / "scripts" / "hello.py").read_text() == "VALUE = 'mine'\n"
    git("checkout", "--", ".", cwd=target)
    (outcome,) = manager.update_all()
    assert outcome.ok and (target / "scripts" / "hello.py").read_text() == "VALUE = 2\n"


# --- enable / disable ---------------------------------------------------------------------------


def _folders(paths: Paths, builtin: list[str], user: list[str]) -> None:
    for name in builtin:
        (paths.extensions_builtin_dir / name).mkdir(parents=True)
    for name in user:
        (paths.extensions_dir / name).mkdir(parents=True)


def test_enabled_set_is_saved_in_config_json_and_read_back(make_manager: ManagerFactory) -> None:
    manager = make_manager()
    _folders(manager.paths, ["Lora"], ["one", "two"])
    assert [e.name for e in manager.active()] == ["Lora", "one", "two"]
    manager.set_enabled(["two"], "none")
    stored = json.loads(manager.paths.config_file.read_text(encoding="utf-8"))
    assert stored["disabled_extensions"] == ["two"]
    restarted = make_manager()
    assert {e.name: e.enabled for e in restarted.installed()} == {"Lora": True, "one": True, "two": False}
    assert [e.name for e in restarted.active()] == ["Lora", "one"]
    assert [e.is_builtin for e in restarted.installed()] == [True, False, False]

    restarted.set_enabled(["two"], "extra")
    assert json.loads(restarted.paths.config_file.read_text())["disable_all_extensions"] == "extra"
    assert [e.name for e in make_manager().active()] == ["Lora"]
    make_manager().set_enabled([], "all")
    assert make_manager().active() == []
    with pytest.raises(ValidationError):
        make_manager().set_enabled([], "some")


@pytest.mark.parametrize(
    ("flag", "active"),
    [("--disable-all-extensions", []), ("--disable-extra-extensions", ["Lora"]), (None, ["Lora", "one"])],
)
def test_disable_flags(make_manager: ManagerFactory, flag: str | None, active: list[str]) -> None:
    manager = make_manager(*([flag] if flag else []))
    _folders(manager.paths, ["Lora"], ["one"])
    assert [e.name for e in manager.active()] == active
    assert (manager.disabled_reason() is None) == (flag is None)
    assert len(manager.installed()) == 2  # still listed


def test_metadata_name_and_duplicate_canonical_names(make_manager: ManagerFactory) -> None:
    manager = make_manager()
    _folders(manager.paths, [], ["a-ext", "b-ext"])
    for name in ("a-ext", "b-ext"):
        (manager.paths.extensions_dir / name / "metadata.ini").write_text("[Extension]\nName = Shared Name\n")
    (manager.paths.extensions_dir / "b-ext" / "requirements.txt").write_text("numpy\n")
    (ext,) = manager.installed()  # the second with the same canonical name is skipped, as in A1111
    assert (ext.name, ext.canonical_name) == ("a-ext", "Shared Name")


def test_mark_error_is_listed(make_manager: ManagerFactory) -> None:
    manager = make_manager()
    _folders(manager.paths, [], ["bad"])
    manager.mark_error("bad", "ImportError: no module named x")
    assert manager.get("bad").error == "ImportError: no module named x"
    manager.clear_error("bad")
    assert manager.get("bad").error is None


# --- the network gate ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--listen"], ["--server-name", "example.org"], ["--share"]])
def test_every_write_action_is_refused_when_non_local(
    make_manager: ManagerFactory, tmp_path: Path, flags: list[str]
) -> None:
    local = make_manager()
    _folders(local.paths, [], ["present"])
    manager = make_manager(*flags)
    assert manager.access_disabled
    assert manager.access_note is not None and "--enable-insecure-extension-access" in manager.access_note
    actions = [
        lambda: manager.install_from_url(str(tmp_path / "repos" / "local.git")),
        lambda: manager.install_from_url("https://github.com/example/ext.git"),
        lambda: manager.update(["present"]),
        lambda: manager.check_for_updates(),
        lambda: manager.set_enabled(["present"]),
        lambda: manager.save_config_state("x"),
        lambda: manager.restore_config_state("x"),
    ]
    for action in actions:
        with pytest.raises(ForbiddenError, match="--enable-insecure-extension-access"):
            action()
    assert _tree(manager.paths.extensions_dir) == ["present"]
    assert _tree(manager.paths.tmp_dir) == [] and not manager.paths.config_file.exists()
    assert not manager.paths.config_states_dir.exists()


def test_unlocked_non_local_server_still_refuses_local_repositories(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo
) -> None:
    manager = make_manager("--listen", "--enable-insecure-extension-access")
    assert not manager.access_disabled
    for url in (ext_repo.url, "file://" + ext_repo.url):
        with pytest.raises(ForbiddenError, match="only allowed when the server is local"):
            manager.install_from_url(url)
    assert _tree(manager.paths.extensions_dir) == []


# --- unsafe names and URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "x/../../y", ".git", "..", ".", "a\\b", "/etc", "-rf", "a b", "x\x00y", "." + "x" * 3]
)
def test_unsafe_directory_names_are_refused(make_manager: ManagerFactory, name: str) -> None:
    manager = make_manager()
    with pytest.raises(ValidationError, match="directory name"):
        manager.install_from_url("https://example.invalid/x/y.git", "", name)  # refused before any clone
    assert _tree(manager.paths.extensions_dir) == [] and _tree(manager.paths.tmp_dir) == []
    assert not (manager.paths.data_dir.parent / "x").exists() and not (manager.paths.data_dir / "y").exists()


def test_safe_directory_names() -> None:
    for name in ("sd-webui-controlnet", "a1111_ext.v2", "Tag+Complete", "9lives"):
        assert check_dirname(name) == name


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/x/y.git",
        "git://github.com/x/y.git",
        "ssh://git@github.com/x/y.git",
        "git@github.com:x/y.git",
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "-uhttps://x",
        "relative/path",
        "",
    ],
)
def test_unsafe_urls_are_refused(make_manager: ManagerFactory, url: str) -> None:
    manager = make_manager()
    with pytest.raises(ValidationError):
        manager.install_from_url(url, "", "target")
    assert _tree(manager.paths.extensions_dir) == [] and _tree(manager.paths.tmp_dir) == []


def test_url_rules() -> None:
    assert check_url(" https://github.com/x/y.git ", allow_local=False) == "https://github.com/x/y.git"
    assert check_url("/srv/repos/y.git", allow_local=True) == "/srv/repos/y.git"
    assert check_url("file:///srv/repos/y.git", allow_local=True) == "file:///srv/repos/y.git"
    for url in ("file:///srv/repos/y.git", "/srv/repos/y.git"):
        with pytest.raises(ForbiddenError):
            check_url(url, allow_local=False)
    assert "protocol.file.allow=always" not in GitRunner(allow_local=False).config_args()
    assert "protocol.file.allow=always" in GitRunner(allow_local=True).config_args()


# --- git timeouts -------------------------------------------------------------------------------


def _hanging_git(tmp_path: Path) -> Path:
    """A `git` that never answers (and whose child keeps the output pipe open)."""
    script = tmp_path / "fake-git"
    script.write_text("#!/bin/sh\nsleep 60 &\nwait\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_hanging_git_is_killed_after_its_timeout(
    make_manager: ManagerFactory, ext_repo: ExtensionRepo, tmp_path: Path
) -> None:
    runner = GitRunner(allow_local=True, git=str(_hanging_git(tmp_path)), clone_timeout_s=0.5, local_timeout_s=0.5)
    with pytest.raises(GitTimeout, match=r"timed out after 0\.5 s"):
        runner.run(["status"])
    manager = make_manager(git=runner)
    with pytest.raises(GitTimeout, match="git clone"):
        manager.install_from_url(ext_repo.url)
    assert _tree(manager.paths.extensions_dir) == [] and _tree(manager.paths.tmp_dir) == []


def test_git_runs_without_prompts_hooks_or_credential_helpers() -> None:
    runner = GitRunner()
    env = runner.environment({"SSH_ASKPASS": "/x", "GIT_SSH_COMMAND": "evil", "HOME": "/home/u"})
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_ASKPASS"] == "" and env["HOME"] == "/home/u"
    assert "SSH_ASKPASS" not in env and "GIT_SSH_COMMAND" not in env
    args = runner.config_args()
    for setting in ("credential.helper=", "core.hooksPath=/dev/null", "protocol.allow=never"):
        assert setting in args
    assert "protocol.https.allow=always" in args
