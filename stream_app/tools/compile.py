"""Compile the scoring core with mypyc: `python -m stream_app.tools.compile DIR`.

DIR holds the `stream_app` package to compile (a site-packages directory: the production image) or gets a copy of
the one this runs from (`make bench`: build/compiled, put first on PYTHONPATH). The modules in COMPILED are built
into C extensions next to their sources, which Python then imports instead of the .py files; everything else stays
interpreted. The sources are not changed: a checkout never holds compiled modules, so an edit is never shadowed by a
stale build (the editable install of `make test` runs the sources).

Needs mypy (it ships mypyc) and a C compiler; about 40 s on 2 cores. Measured (bench/RESULTS.md, Speed steps): the
scoring core 1.26x faster on the hot-video workload, the same decisions to the micro (tests/tools/test_compile.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import stream_app

# the per-event path of the scoring core (domain/): rules, their state, windows, ledgers, journal, the device judge
# and its log, validation, the records, the partitioner. Left interpreted: policy (a frozen dataclass set through
# object.__setattr__, read once), profiles, codecs (orjson wrappers), errors (exception classes the edges subclass).
COMPILED = (
    "device_judge",
    "device_log",
    "device_records",
    "events",
    "journal",
    "partition",
    "partitioning",
    "records",
    "rules",
    "rules_state",
    "scoring",
    "validation",
    "windows",
)


def compile_into(target: Path) -> list[Path]:
    """Compile COMPILED in `target`/stream_app (copied there from this package first if it is not there); return
    the extension modules built."""
    target = target.resolve()
    package = target / "stream_app"
    if not package.exists():
        shutil.copytree(Path(stream_app.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    sources = [package / "domain" / f"{name}.py" for name in COMPILED]
    missing = [str(source) for source in sources if not source.is_file()]
    if missing:
        raise SystemExit(f"compile: no {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="mypyc-") as tmp:
        build = Path(tmp)
        config = build / "mypy.ini"
        config.write_text(f"[mypy]\nignore_missing_imports = True\ncache_dir = {build / 'cache'}\n")
        env = dict(os.environ, MYPYC_OPT_LEVEL=os.environ.get("MYPYC_OPT_LEVEL", "3"))
        # mypyc builds in place under its working directory (the modules' extensions and a shared helper module),
        # which is the temporary directory: the extensions are then moved next to their sources
        (build / "stream_app" / "domain").mkdir(parents=True)
        command = [sys.executable, "-m", "mypyc", "--config-file", str(config), *map(str, sources)]
        done = subprocess.run(command, cwd=build, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"compile: mypyc failed (exit {done.returncode})")
        for extension in build.rglob("*.so"):
            relative = extension.relative_to(build)
            if relative.parts[0] == "build":
                continue  # the build tree's copies
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(extension, target / relative)
    built = sorted((package / "domain").glob("*.so"))
    names = {path.name.split(".")[0] for path in built}
    if names != set(COMPILED):
        raise SystemExit(f"compile: built {sorted(names)}, expected {sorted(COMPILED)}")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="holds stream_app (site-packages) or gets a copy of it")
    args = parser.parse_args(argv)
    built = compile_into(args.directory)
    print(f"compiled {len(built)} modules of the scoring core under {args.directory / 'stream_app' / 'domain'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
