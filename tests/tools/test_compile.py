"""stream_app.tools.compile: the scoring core compiled with mypyc (what `make bench` measures and the production image
runs) decides exactly as the interpreted sources do, and passes the core's own unit tests.

One build per module run (about 40 s on 2 cores); skipped with a reason where no C compiler is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from stream_app.tools.compile import COMPILED, compile_into

ROOT = Path(__file__).resolve().parents[2]
DOMAIN_SPEED = ROOT / "bench" / "domain_speed.py"

pytestmark = pytest.mark.skipif(
    shutil.which(str(sysconfig.get_config_var("CC") or "cc").split()[0]) is None, reason="no C compiler for mypyc"
)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("compiled")
    built = compile_into(target)
    assert {path.name.split(".")[0] for path in built} == set(COMPILED)
    return target


def run(code: list[str], *, compiled: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python *code` with the compiled tree first on sys.path, or the sources (the editable install)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if compiled is not None:
        env["PYTHONPATH"] = str(compiled)
    return subprocess.run([sys.executable, *code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_compiled_modules_are_the_ones_imported(compiled: Path, tmp_path: Path) -> None:
    probe = "from stream_app.edges.runtime import core_compiled; from stream_app.domain import policy, rules; "
    probe += "print(core_compiled(), rules.__file__.endswith('.so'), policy.__file__.endswith('.py'))"
    assert run(["-c", probe], compiled=compiled, cwd=tmp_path).stdout.split() == ["True", "True", "True"]
    assert run(["-c", probe], compiled=None, cwd=tmp_path).stdout.split() == ["False", "False", "True"]


def test_compiled_and_interpreted_cores_make_the_same_decisions(compiled: Path, tmp_path: Path) -> None:
    """Every device flag, outcome, dead letter and each video's last accrual (money to the micro) of the fraud
    simulation, as bench/domain_speed.py --decisions writes them."""
    files = {}
    for name, tree in (("compiled", compiled), ("interpreted", None)):
        out = tmp_path / f"{name}.txt"
        args = [str(DOMAIN_SPEED), "--workload", "fraud", "--seed", "2", "--events", "20000", "--repeat", "1"]
        done = run([*args, "--decisions", str(out)], compiled=tree, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        files[name] = out.read_text()
    kinds = {line.split(" ", 1)[0] for line in files["interpreted"].splitlines()}
    assert kinds == {"flag", "outcome", "accrual"}  # device flags, rejections and money were all decided
    assert files["compiled"] == files["interpreted"]


def test_the_core_unit_tests_pass_compiled(compiled: Path) -> None:
    """tests/domain on the compiled modules (the repository's root appended to sys.path, after the compiled tree)."""
    code = (
        "import sys, pytest\n"
        "from stream_app.edges.runtime import core_compiled\n"
        "assert core_compiled()\n"
        f"code = pytest.main(['-q', '-p', 'no:cacheprovider', '--import-mode=append', '--rootdir', {str(ROOT)!r},"
        f" {str(ROOT / 'tests' / 'domain')!r}])\n"
        "assert core_compiled()\n"
        "sys.exit(code)\n"
    )
    done = run(["-c", code], compiled=compiled, cwd=compiled)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_a_directory_without_the_core_sources_is_refused_clearly(tmp_path: Path) -> None:
    """A target whose stream_app lacks the modules to compile (a wheel without sources, a wrong path) stops with
    the missing files named, before mypyc runs."""
    (tmp_path / "stream_app" / "domain").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"compile: no .*stream_app/domain/device_judge\.py"):
        compile_into(tmp_path)
