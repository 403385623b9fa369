"""
The browser client library (``static/rtcsignal.js``) in Node: its own tests
(``js/test/*.test.mjs``, Node's test runner with ``ws``) against real
``twistd -n rtcsignal`` processes that they start themselves, and the npm
package packed from ``static/``, installed into a scratch project.

Needs ``node`` and ``npm`` and ``js/node_modules`` (``make js-tools``):
skipped without them, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from twisted_signal.client import Backoff

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"
STATIC = ROOT / "static"
TWISTD = Path(sys.executable).with_name("twistd")


def unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (Debian packages nodejs and npm)")
    assert path is not None
    return path


def js_tools() -> Path:
    modules = JS / "node_modules"
    if not (modules / "ws").is_dir() or not (modules / "typescript").is_dir():
        unavailable("js/node_modules is missing: make js-tools")
    return modules


def test_library_in_node_against_a_real_server() -> None:
    """
    Every event, refusals not retried, resume with sends queued meanwhile,
    reconnection after a server restart, ICE refresh, forged server events
    ignored: ``node --test`` passes (its output is shown when it fails).
    """
    node = tool("node")
    js_tools()
    tests = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    assert tests, "no js/test/*.test.mjs"
    env = {**os.environ, "RTCSIGNAL_TWISTD": str(TWISTD)}
    run = subprocess.run(
        [node, "--test", "--test-timeout=60000", *tests],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout, run.stdout


def test_package_version_follows_pyproject() -> None:
    """The npm package has the Python package's version, and so has the module."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    package = json.loads((STATIC / "package.json").read_text())
    assert package["version"] == project["version"]
    assert (
        f'export const VERSION = "{project["version"]}";' in (STATIC / "rtcsignal.js").read_text()
    )
    for target in package["exports"].values():
        for path in target.values():
            assert (STATIC / path).is_file(), path
    assert (STATIC / package["types"]).is_file()


def test_backoff_has_the_python_clients_constants() -> None:
    """The JavaScript `Backoff` (ms) and the Python one (s) are the same policy."""
    node = tool("node")
    script = (
        f"import({json.dumps((STATIC / 'rtcsignal.js').as_uri())}).then(({{ Backoff }}) => {{"
        " const b = new Backoff();"
        " console.log(JSON.stringify([b.initial, b.maximum, b.factor, b.jitter])); })"
    )
    run = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    python = Backoff()
    assert json.loads(run.stdout) == [
        python.initial * 1000,
        python.maximum * 1000,
        python.factor,
        python.jitter,
    ]


def test_packed_tarball_installs_and_imports(tmp_path: Path) -> None:
    """
    ``npm pack`` of ``static/`` installs into a scratch project, where Node
    imports both modules and TypeScript compiles a program against them.
    """
    npm = tool("npm")
    node = tool("node")
    modules = js_tools()
    npm_env = {**os.environ, "npm_config_cache": str(tmp_path / "npm-cache")}
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp_path), str(STATIC)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=npm_env,
    )
    (info,) = json.loads(packed.stdout)
    files = {entry["path"] for entry in info["files"]}
    assert {"rtcsignal.js", "rtcsignal.d.ts", "rtcsignal-calls.js", "verify.js"} <= files, files
    assert not files & {"room.js", "room.html", "index.html", "style.css"}, files
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "scratch", "private": True, "type": "module"})
    )
    subprocess.run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", str(tmp_path / info["filename"])],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=npm_env,
    )
    name = info["name"]
    (project / "main.mjs").write_text(
        f'import {{ Signaling, Backoff, VERSION }} from "{name}";\n'
        f'import {{ Calls, TIMINGS }} from "{name}/calls";\n'
        "console.log(VERSION, typeof Signaling, typeof Calls,\n"
        "    new Backoff().maximum, TIMINGS.offerWait);\n"
    )
    imported = subprocess.run(
        [node, "main.mjs"], cwd=project, capture_output=True, text=True, timeout=60, check=True
    )
    assert imported.stdout.split() == [info["version"], "function", "function", "10000", "4000"]
    (project / "main.ts").write_text(
        f'import {{ Signaling, type PeerMessage }} from "{name}";\n'
        f'import {{ Calls }} from "{name}/calls";\n'
        'const client = new Signaling("ws://127.0.0.1:1/socket/x/");\n'
        'client.on("message:chat", (m: PeerMessage<{ text: string }>) => m.data.text.length);\n'
        "const calls: Calls = new Calls(client);\n"
        "calls.on('added', ({ call }) => call.peerId.length);\n"
        "// @ts-expect-error: send takes an event name\n"
        "client.send(42);\n"
    )
    (project / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "module": "nodenext",
                    "moduleResolution": "nodenext",
                    "target": "es2022",
                    "lib": ["es2022", "dom"],
                    "skipLibCheck": False,
                },
                "files": ["main.ts"],
            }
        )
    )
    compiled = subprocess.run(
        [node, str(modules / "typescript" / "bin" / "tsc"), "-p", "."],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
