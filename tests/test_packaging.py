"""
SLOW (about 20 s, once per session): the package as users install it.

One fresh virtualenv per session gets a regular (non-editable) ``pip
install`` of the source tree, which pulls Twisted and Autobahn from the
package index; every check then runs that virtualenv's programs from a
folder outside the repository, so nothing is imported from the source tree.

The source tree is copied first, without what ``.gitignore`` leaves out
(``build/``, ``*.egg-info``, ``dropin.cache``, the virtualenv, ...): that is
what a fresh checkout installs, and pip then builds in the copy, never in
the shared working tree.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

# One worker runs the whole module, so that its module-scoped virtualenv with the package installed
# is made once, not once per xdist worker.
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("packaging")]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "twisted-signal"
NOT_SHIPPED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "_trial_temp",
    "test-output",
    "dropin.cache",
    "twistd.pid",
    "twistd.log*",
)


@dataclass
class Installed:
    venv: Path
    elsewhere: Path
    """An empty folder outside the repository, to run things from."""

    def run(
        self, program: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(self.venv / "bin" / program), *args],
            cwd=self.elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str) -> str:
        result = self.run("python", "-c", code)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SHIPPED, symlinks=True)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"pip install failed:\n{result.stdout}\n{result.stderr}")
    return Installed(venv, elsewhere)


def test_twistd_lists_the_plugin(installed: Installed) -> None:
    result = installed.run("twistd", "--help")
    assert result.returncode == 0, result.stderr
    assert "rtcsignal" in result.stdout


def test_plugin_help_shows_its_options(installed: Installed) -> None:
    result = installed.run("twistd", "rtcsignal", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--endpoint", "--room", "--no-auto-rooms", "--max-peers", "--static"):
        assert option in result.stdout


def test_package_is_imported_from_the_virtualenv_with_its_pages(installed: Installed) -> None:
    found = json.loads(
        installed.python(
            "import json, twisted_signal, twisted_signal.web as web;"
            "print(json.dumps([twisted_signal.__file__, web.PACKAGED_PAGES]))"
        )
    )
    package = Path(found[0]).parent
    pages = Path(found[1])
    assert package.is_relative_to(installed.venv), package
    assert pages == package / "static"
    assert (pages / "index.html").is_file()
    assert (pages / "room.html").is_file()
    assert (package / "py.typed").is_file()
    # Every page and asset of the source tree is shipped, unchanged.
    source_pages = ROOT / "static"
    for path in source_pages.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            shipped = pages / path.relative_to(source_pages)
            assert shipped.is_file(), shipped
            assert shipped.read_bytes() == path.read_bytes(), shipped


def test_only_the_dropins_are_shipped_under_twisted(installed: Installed) -> None:
    """
    ``twisted/`` and ``twisted/plugins/`` belong to Twisted: the package adds
    its dropins (the twistd plugin, the ``reuseport:`` endpoint parser) and
    nothing else (an ``__init__.py`` there would replace
    Twisted's own; a ``dropin.cache`` would be stale).
    """
    files = json.loads(
        installed.python(
            "import json, importlib.metadata as m;"
            f"print(json.dumps([str(f) for f in m.files({PACKAGE!r})]))"
        )
    )
    under_twisted = {f for f in files if f.startswith("twisted/") and "__pycache__" not in f}
    assert under_twisted == {
        "twisted/plugins/rtcsignal_plugin.py",
        "twisted/plugins/rtcsignal_reuseport.py",
    }
    found = installed.python(
        "from twisted.internet import reactor;"
        "from twisted.internet.endpoints import serverFromString;"
        "print(type(serverFromString(reactor, 'reuseport:0')).__name__)"
    )
    assert found.strip() == "ReusePortEndpoint"
    assert not [f for f in files if f.endswith("dropin.cache")]
    assert "twisted_signal/py.typed" in files
    assert "twisted_signal/static/index.html" in files
    assert "twisted_signal/static/room.html" in files


def test_installed_server_serves_the_packaged_pages(installed: Installed) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    argv = [str(installed.venv / "bin" / "twistd"), "--pidfile=", "-n", "rtcsignal"]
    argv += ["--endpoint", f"tcp:{port}:interface=127.0.0.1"]
    log = installed.elsewhere / "twistd.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=installed.elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        body = b""
        deadline = time.monotonic() + 15
        while not body and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"twistd exited with {process.returncode}\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    body = answer.read()
            except OSError:
                time.sleep(0.05)
        assert body == (ROOT / "static" / "index.html").read_bytes(), log.read_text()
    finally:
        process.kill()
        process.wait()


def test_the_admin_api_description_is_shipped(installed: Installed) -> None:
    """
    The wheel holds the real ``docs/admin-openapi.yaml`` (not a link to the
    source tree), and the installed admin API serves that copy.
    """
    found = json.loads(
        installed.python(
            "import json, twisted_signal, twisted_signal.admin as admin;"
            "print(json.dumps([twisted_signal.__file__, admin.OPENAPI_PATH]))"
        )
    )
    shipped = Path(found[1])
    assert shipped == Path(found[0]).parent / "docs" / "admin-openapi.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_bytes() == (ROOT / "docs" / "admin-openapi.yaml").read_bytes()
    # Of docs/, only that file ships.
    assert [p.name for p in shipped.parent.iterdir() if p.name != "__pycache__"] == [
        "admin-openapi.yaml"
    ]
