"""Settings from JDT_* variables, command-line overrides, and what ``run`` hands to uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from jdt_service import Settings
from jdt_service import server as server_module


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server_module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("JDT_"):
            monkeypatch.delenv(name)


def test_defaults_are_loopback_and_bounded() -> None:
    s = Settings()
    assert (s.host, s.port, s.device, s.workers) == ("127.0.0.1", 8000, "auto", 1)
    assert s.is_loopback and s.api_keys == [] and s.cors_origins == []
    assert s.max_concurrency >= 1 and s.max_queue >= 0 and s.max_voxels > 0


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JDT_API_KEYS", " alpha, beta,,gamma ")
    monkeypatch.setenv("JDT_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("JDT_DEVICE", "CUDA:1")
    monkeypatch.setenv("JDT_MAX_UPLOAD_BYTES", "123456")
    monkeypatch.setenv("JDT_TEMP_DIR", str(tmp_path))
    monkeypatch.setenv("JDT_LOG_FORMAT", "TEXT")
    s = Settings()
    assert s.api_keys == ["alpha", "beta", "gamma"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.device == "cuda:1" and s.max_upload_bytes == 123456
    assert s.temp_dir == tmp_path and s.log_format == "text"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JDT_DEVICE", "gpu"),
        ("JDT_PORT", "70000"),
        ("JDT_MAX_CONCURRENCY", "0"),
        ("JDT_LOG_LEVEL", "loud"),
    ],
)
def test_bad_environment_values_are_refused(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("JDT_").lower()):
        Settings()


def test_command_line_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JDT_PORT", "9000")
    monkeypatch.setenv("JDT_DEVICE", "cuda")
    s = server_module.settings_from_args(parse("--device", "cpu", "--max-queue", "3"))
    assert (s.port, s.device, s.max_queue) == (9000, "cpu", 3)


def capture_uvicorn(monkeypatch: pytest.MonkeyPatch) -> dict:
    import uvicorn

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, **kwargs))
    return seen


def test_run_starts_uvicorn_with_the_factory(monkeypatch: pytest.MonkeyPatch, free_port) -> None:  # type: ignore[no-untyped-def]
    seen = capture_uvicorn(monkeypatch)
    port = free_port()
    assert server_module.run(parse("--port", str(port), "--workers", "2", "--device", "cpu")) == 0
    assert seen["app"] == "jdt_service.app:create_app" and seen["factory"] is True
    assert (seen["host"], seen["port"], seen["workers"]) == ("127.0.0.1", port, 2)
    assert seen["access_log"] is False
    # worker processes rebuild the same settings from the environment
    assert os.environ["JDT_PORT"] == str(port) and os.environ["JDT_DEVICE"] == "cpu"
    assert Settings().port == port


def test_public_bind_without_keys_warns(monkeypatch: pytest.MonkeyPatch, caplog, free_port) -> None:  # type: ignore[no-untyped-def]
    capture_uvicorn(monkeypatch)
    caplog.set_level(logging.WARNING, logger="jdt_service")
    port = str(free_port())  # not the default 8000: a service may run on this machine
    assert server_module.run(parse("--host", "0.0.0.0", "--port", port)) == 0
    assert any("without API keys" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("JDT_API_KEYS", "k")
    server_module.run(parse("--host", "0.0.0.0", "--port", port))
    assert not any("without API keys" in r.getMessage() for r in caplog.records)


def test_invalid_option_exits_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    seen = capture_uvicorn(monkeypatch)
    assert server_module.run(parse("--device", "tpu")) == 2
    assert "device" in capsys.readouterr().err and not seen


def test_python_dash_m_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jdt_service", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--host", "--port", "--workers", "--device", "--log-level", "--max-voxels"):
        assert option in out


def test_every_setting_has_an_option_made_from_its_field() -> None:
    from jdt_service.settings import ENV_ONLY

    assert {"api_keys", "admin_keys"} <= ENV_ONLY  # the secrets
    parser = argparse.ArgumentParser()
    server_module.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        if name in ENV_ONLY:
            assert flag not in text  # a key on the command line would show in ps
            assert f"JDT_{name.upper()}" in text  # but the help says where it comes from
        else:
            assert flag in text and f"JDT_{name.upper()}" in text, name
    # a default is given once, as the docs spell it
    assert "(JDT_TEMP_DIR)" in text and "JDT_TEMP_DIR, default" not in text
    assert "(JDT_IDLE_INLINE, default true)" in text
    assert "default True" not in text and "default False" not in text
    s = server_module.settings_from_args(
        parse("--max-job-bytes", "2097152", "--header-timeout", "2.5", "--cors-origins", "a,b")
    )
    assert (s.max_job_bytes, s.header_timeout, s.cors_origins) == (2097152, 2.5, ["a", "b"])
    with pytest.raises(SystemExit):
        parse("--log-format", "xml")  # choices come from the Literal type
    # a boolean is a flag and its --no- form; not given, the environment's value stays
    assert server_module.settings_from_args(parse("--keep-predictions")).keep_predictions
    assert not server_module.settings_from_args(parse("--no-keep-predictions")).keep_predictions
    assert parse().keep_predictions is None


def test_unknown_jdt_variables_are_named_at_start_up(monkeypatch, caplog) -> None:
    from jdt_service import create_app
    from jdt_service.settings import unknown_variables

    assert unknown_variables({"JDT_PORT": "1", "JDT_PROT": "2", "PATH": "x"}) == ["JDT_PROT"]

    monkeypatch.setenv("JDT_DEVICE", "cpu")
    monkeypatch.setenv("JDT_MAX_QUEU", "3")  # misspelt JDT_MAX_QUEUE
    caplog.set_level(logging.WARNING, logger="jdt_service")
    create_app()
    warned = [r.getMessage() for r in caplog.records if "JDT_MAX_QUEU" in r.getMessage()]
    assert len(warned) == 1 and "JDT_DEVICE" not in warned[0]


def test_the_set_up_variables_are_not_unknown_settings() -> None:
    """The README's command runs the set-up and then the service in one shell: the set-up's
    own variables (every JDT_* that scripts/bootstrap.sh or the compose file reads and that
    is no setting) must not be warned about as misspelt settings."""
    import re

    from jdt_service.settings import SETUP_VARIABLES, Settings, unknown_variables

    root = Path(__file__).resolve().parents[1]
    read = set()
    for script in ("scripts/bootstrap.sh", "docker/compose.yaml"):
        read |= set(re.findall(r"\$\{(JDT_[A-Z_]+)", (root / script).read_text()))
    settings = {f"JDT_{name.upper()}" for name in Settings.model_fields}
    assert read - settings == SETUP_VARIABLES
    assert unknown_variables(dict.fromkeys(SETUP_VARIABLES, "x")) == []


def test_every_setting_is_documented() -> None:
    # the README's table of JDT_* variables and docs/service.md list every setting
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    service = (root / "docs" / "service.md").read_text()
    for name in Settings.model_fields:
        variable = f"`JDT_{name.upper()}`"
        assert f"| {variable}" in readme or f", {variable}" in readme, variable
        assert variable in service, variable


def _cgroup_tree(tmp_path: Path, files: dict[str, str], membership: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return proc, root


def test_memory_limit_is_the_smallest_cgroup_limit_of_the_process(tmp_path: Path) -> None:
    """In a container sysconf reports the host's memory; the budget's default must come from
    the container's limit (the kernel kills the process past it)."""
    from jdt_service.memory_limit import memory_limit

    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    gib = 2**30
    # cgroup v2: the process's own cgroup unlimited, its parent limited to 3 GiB
    proc, root = _cgroup_tree(
        tmp_path / "v2",
        {"memory.max": "max\n", "a/memory.max": f"{3 * gib}\n", "a/b/memory.max": "max\n"},
        "0::/a/b\n",
    )
    assert memory_limit(proc, root) == min(physical, 3 * gib)
    # cgroup v1 inside a container: the path of /proc/self/cgroup is not mounted, the root is
    proc, root = _cgroup_tree(
        tmp_path / "v1",
        {"memory/memory.limit_in_bytes": f"{gib}\n", "cpu/cpu.shares": "1024\n"},
        "4:memory:/docker/abc123\n3:cpu,cpuacct:/docker/abc123\n",
    )
    assert memory_limit(proc, root) == min(physical, gib)
    # unlimited (v1's huge number, v2's max), unreadable or absent: the physical memory
    proc, root = _cgroup_tree(
        tmp_path / "none", {"memory/memory.limit_in_bytes": "9223372036854771712\n"}, "4:memory:/\n"
    )
    assert memory_limit(proc, root) == physical
    assert memory_limit(tmp_path / "missing", root) == physical
    # bytes that are not text, in either file: not a limit, not an error
    proc, root = _cgroup_tree(tmp_path / "odd", {"memory/memory.limit_in_bytes": "x"}, "")
    (root / "memory" / "memory.limit_in_bytes").write_bytes(b"\xff\xfe12")
    proc.write_bytes(b"4:memory:/\xff\n0::/\n")
    assert memory_limit(proc, root) == physical


def test_the_default_memory_budget_is_half_the_limit(monkeypatch) -> None:
    import jdt_service.settings as settings_module

    monkeypatch.setattr(settings_module, "memory_limit", lambda: 8 * 2**30)
    assert Settings(device="cpu").memory_budget == 4 * 2**30
    assert Settings(device="cpu").job_memory_budget == 2 * 2**30
    # the budgets are per process: the worker processes share the limit
    assert Settings(device="cpu", workers=2).memory_budget == 2 * 2**30
    assert Settings(device="cpu", workers=2).job_memory_budget == 2**30
    assert Settings(device="cpu", memory_budget_bytes=2**30).memory_budget == 2**30


def test_the_compose_file_fits_its_memory_limit() -> None:
    """What the compose file's service may hold at once, the uploads on its in-RAM /tmp (which
    counts against the container's limit) and the memory its two budgets plan, leaves at
    least 1 GiB of its memory limit to the process itself."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    service = yaml.safe_load((root / "docker" / "compose.yaml").read_text())["services"]["scoring"]

    def default(variable: str) -> int:  # "${JDT_X:-123}" -> 123
        return int(service["environment"][variable].split(":-")[1].rstrip("}"))

    def size(text: str) -> int:
        return int(text.rstrip("g")) * 2**30

    limit = size(service["deploy"]["resources"]["limits"]["memory"])
    tmpfs = size(next(o for o in service["tmpfs"][0].split(",") if "size=" in o).split("=")[-1])
    per_process = default("JDT_MEMORY_BUDGET_BYTES") + default("JDT_JOB_MEMORY_BUDGET_BYTES")
    assert tmpfs + default("JDT_WORKERS") * per_process + 2**30 <= limit
    uploads = default("JDT_MAX_UPLOADS") + default("JDT_MAX_CONCURRENCY") + default("JDT_MAX_QUEUE")
    assert uploads * 2 * default("JDT_MAX_UPLOAD_BYTES") <= tmpfs  # the tmpfs formula
    assert default("JDT_MEMORY_BUDGET_BYTES") >= Settings().max_job_bytes  # a 4 GiB job fits
