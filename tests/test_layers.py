"""The three layers stay apart: the domain imports no Kafka, Faust, asyncio or Prometheus; edges never import the
Faust wiring."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import stream_app.domain
import stream_app.edges

FORBIDDEN_IN_DOMAIN = ("faust", "aiokafka", "asyncio", "prometheus_client", "mode", "confluent_kafka")


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def modules_of(package: object) -> list[str]:
    path = package.__path__  # type: ignore[attr-defined]
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    return sorted(info.name for info in pkgutil.iter_modules(path, prefix))


def test_domain_modules_exist() -> None:
    assert "stream_app.domain.policy" in modules_of(stream_app.domain)


@pytest.mark.parametrize("module", modules_of(stream_app.domain))
def test_domain_imports_only_pure_python(module: str) -> None:
    loaded = imported_after(module)
    assert not {m for m in loaded if m.split(".")[0] in FORBIDDEN_IN_DOMAIN}
    assert not {m for m in loaded if m.startswith(("stream_app.streaming", "stream_app.edges"))}


@pytest.mark.parametrize("module", modules_of(stream_app.edges))
def test_edges_never_import_the_faust_wiring(module: str) -> None:
    assert not {m for m in imported_after(module) if m.startswith("stream_app.streaming")}
