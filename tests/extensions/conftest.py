"""Extension-manager fixtures: a small extension as a local bare git repository (commit 1, and
`push` for the next ones) and managers over a tmp data dir with the flags a test gives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from modules.core.options import Options, default_option_infos
from modules.core.paths import Paths
from modules.core.settings import parse_settings
from modules.extensions.manager import ExtensionManager
from tests.fixtures.extension_repos import git, make_extension_repo, push_commit

# install.py appends a line to install-runs.txt in its working directory (the extension's folder)
INSTALL_PY = (
    "import os, sys\n"
    "with open('install-runs.txt', 'a', encoding='utf-8') as f:\n"
    "    f.write(os.environ.get('PYTHONPATH', '').split(os.pathsep)[0] + '\\n')\n"
    "print('install.py ran in', os.getcwd())\n"
)
EXTENSION_FILES = {
    "install.py": INSTALL_PY,
    "scripts/hello.py": "VALUE = 1\n",
    "javascript/hello.js": "// hello\n",
}
FIRST_COMMIT_TIME = 1704164645  # 2024-01-02T03:04:05Z, the fixture's commit date


@dataclass
class ExtensionRepo:
    bare: Path
    first_commit: str

    @property
    def url(self) -> str:
        return str(self.bare)

    def push(self, files: Mapping[str, str], message: str = "next commit") -> str:
        return push_commit(self.bare, files, message)


@pytest.fixture()
def ext_repo(tmp_path: Path) -> ExtensionRepo:
    """`sd-hello.git`: install.py, a script and a JS file in one commit on `main`."""
    bare = make_extension_repo(tmp_path / "repos", "sd-hello", EXTENSION_FILES)
    return ExtensionRepo(bare, git("rev-parse", "main", cwd=bare))


ManagerFactory = Callable[..., ExtensionManager]


@pytest.fixture()
def make_manager(tmp_path: Path) -> ManagerFactory:
    """`make_manager(*flags)`: a manager over `tmp_path/data` (built-ins in `tmp_path/root/
    extensions-builtin`), config.json read from disk each time."""

    def make(*flags: str, **kwargs: object) -> ExtensionManager:
        settings = parse_settings(["--data-dir", str(tmp_path / "data"), *flags], {})
        paths = Paths.from_settings(settings, tmp_path / "root", {})
        options = Options(default_option_infos(), paths.config_file)
        options.load()
        return ExtensionManager(settings, paths, options, environ={}, **kwargs)  # type: ignore[arg-type]

    return make


def install_runs(path: Path) -> list[str]:
    runs = path / "install-runs.txt"
    return runs.read_text(encoding="utf-8").splitlines() if runs.exists() else []
