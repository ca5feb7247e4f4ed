"""The client commands (run, list, ps, show, pull, create, cp, rm) against real engines.

Read-only commands use the suite's shared engine; commands that change the
store use the private engine from tests/cli/conftest.py, which needs a token.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner, Result

from llmcloud.cli import app
from llmcloud.cli.models import is_loopback_url, pull_target
from llmcloud.engine.client import EngineClient, ModelNotFoundError
from tests.cli.conftest import SHORT_MODEL
from tests.conftest import BUNDLED_MODEL
from tests.engine.gguf_builder import tiny_gguf

if TYPE_CHECKING:
    from tests.engine.registry_fixture import RegistryServer

pytest_plugins = ["tests.engine.registry_fixture"]

runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> Result:
    return runner.invoke(app, list(args), input=input)


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def model_names(client: EngineClient) -> set[str]:
    return {str(model["name"]) for model in client.list_models()}


def write_tiny_gguf(path: Path, name: str = "tiny") -> Path:
    path.write_bytes(tiny_gguf(**{"general.name": name}))
    return path


# list, ps, show


def test_list_prints_header_and_bundled_model(engine_url: str) -> None:
    result = invoke("list", "--url", engine_url)

    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(line for line in lines if line.startswith(BUNDLED_MODEL + " "))
    _, model_id, size, unit, *modified = row.split()
    assert re.fullmatch(r"[0-9a-f]{12}", model_id)
    assert re.fullmatch(r"[0-9.]+", size)
    assert unit == "MB"
    assert modified[-1] == "ago"


def test_list_filters_by_name_prefix(engine_url: str) -> None:
    result = invoke("list", "no-such-prefix", "--url", engine_url)

    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["NAME    ID    SIZE    MODIFIED"]


def test_ps_shows_loaded_model_on_cpu(engine_url: str) -> None:
    with EngineClient(engine_url) as client:
        for _ in client.chat(BUNDLED_MODEL, []):
            pass

    result = invoke("ps", "--url", engine_url)

    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in lines if line.startswith(BUNDLED_MODEL + " "))
    assert "100% CPU" in row
    assert " 1024 " in row
    assert row.endswith("from now")


def test_show_prints_model_parameters_and_license(engine_url: str) -> None:
    result = invoke("show", BUNDLED_MODEL, "--url", engine_url)

    lines = [line.split() for line in result.stdout.splitlines()]
    assert result.exit_code == 0
    assert ["Model"] in lines
    assert ["architecture", "llama"] in lines
    assert ["parameters", "134.52M"] in lines
    assert ["context", "length", "8192"] in lines
    assert ["quantization", "Q4_1"] in lines
    assert ["temperature", "0.2"] in lines
    assert ["License"] in lines


def test_show_parameters_flag_prints_only_parameters(engine_url: str) -> None:
    result = invoke("show", BUNDLED_MODEL, "--parameters", "--url", engine_url)

    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].split() == ["stop", '"<|im_end|>"']
    assert "Model" not in result.stdout


def test_show_license_flag_prints_license(engine_url: str) -> None:
    result = invoke("show", BUNDLED_MODEL, "--license", "--url", engine_url)

    assert result.exit_code == 0
    assert "Apache License, Version 2.0" in result.stdout


def test_show_modelfile_flag_prints_modelfile(engine_url: str) -> None:
    result = invoke("show", BUNDLED_MODEL, "--modelfile", "--url", engine_url)

    assert result.exit_code == 0
    assert "\nFROM " in result.stdout
    assert "PARAMETER temperature 0.2" in result.stdout


def test_show_rejects_two_field_flags(engine_url: str) -> None:
    result = invoke("show", BUNDLED_MODEL, "--parameters", "--license", "--url", engine_url)

    assert result.exit_code == 1
    assert "--parameters and --license" in result.stderr


def test_show_unknown_model_prints_pull_hint(engine_url: str) -> None:
    result = invoke("show", "no-such-model", "--url", engine_url)

    assert result.exit_code == 1
    assert "model 'no-such-model:latest' not found" in result.stderr
    assert "llmcloud pull no-such-model:latest" in result.stderr


# Reaching the engine


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["ps"],
        ["show", "x"],
        ["run", "x", "hello"],
        ["pull", "x"],
        ["cp", "x", "y"],
        ["rm", "x"],
    ],
)
def test_commands_without_engine_say_how_to_start_one(args: list[str]) -> None:
    url = closed_port_url()

    result = invoke(*args, "--url", url)

    assert result.exit_code == 1
    assert f"no engine is running at {url}" in result.stderr
    assert "`llmcloud engine`" in result.stderr


def test_create_without_engine_says_how_to_start_one(tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {BUNDLED_MODEL}\n")
    url = closed_port_url()

    result = invoke("create", "x", "-f", str(modelfile), "--url", url)

    assert result.exit_code == 1
    assert f"no engine is running at {url}" in result.stderr


def test_url_without_scheme_is_rejected() -> None:
    result = invoke("list", "--url", "127.0.0.1:11434")

    assert result.exit_code == 1
    assert "invalid engine URL '127.0.0.1:11434'" in result.stderr


def test_engine_url_comes_from_environment(
    engine_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCLOUD_ENGINE_URL", engine_url)

    result = invoke("list")

    assert result.exit_code == 0
    assert BUNDLED_MODEL in result.stdout


def test_missing_token_prints_token_hint(private_url: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LLMCLOUD_ENGINE_TOKEN")
        result = invoke("list", "--url", private_url)

    assert result.exit_code == 1
    assert "Bearer token" in result.stderr
    assert "LLMCLOUD_ENGINE_TOKEN" in result.stderr


def test_token_from_environment_is_sent(private_url: str) -> None:
    result = invoke("list", "--url", private_url)

    assert result.exit_code == 0
    assert SHORT_MODEL in result.stdout


# run


def test_run_prints_answer_to_prompt(private_url: str) -> None:
    result = invoke("run", SHORT_MODEL, "Say", "hello", "--url", private_url)

    assert result.exit_code == 0
    assert result.stdout.strip()
    assert result.stdout.endswith("\n")


def test_run_reads_prompt_from_stdin(private_url: str) -> None:
    result = invoke("run", SHORT_MODEL, "--url", private_url, input="Say hello\n")

    assert result.exit_code == 0
    assert result.stdout.strip()


def test_run_without_prompt_only_loads_model(private_url: str) -> None:
    result = invoke("run", SHORT_MODEL, "--url", private_url, input="")

    assert result.exit_code == 0
    assert result.stdout == ""


def test_run_rejects_invalid_keepalive(private_url: str) -> None:
    result = invoke("run", SHORT_MODEL, "hi", "--keepalive", "soon", "--url", private_url)

    assert result.exit_code == 1
    assert "invalid duration 'soon'" in result.stderr


def test_run_pulls_missing_model_first(
    private_url: str, private_client: EngineClient, registry_server: RegistryServer
) -> None:
    registry_server.add_bundled_model("library/runpull:1")
    name = f"{registry_server.host}/library/runpull:1"

    result = invoke("run", name, "--insecure", "--url", private_url, input="")

    try:
        assert result.exit_code == 0, result.output
        assert "pulling manifest" in result.stderr
        assert "success" in result.stderr
        assert name in model_names(private_client)
    finally:
        private_client.delete(name)


def test_run_model_missing_in_registry_fails(
    private_url: str, registry_server: RegistryServer
) -> None:
    name = f"{registry_server.host}/library/absent:1"

    result = invoke("run", name, "hi", "--insecure", "--url", private_url)

    assert result.exit_code == 1
    assert "not found" in result.stderr


# pull


def test_pull_file_saves_model_under_file_name(
    private_url: str, private_client: EngineClient, tmp_path: Path
) -> None:
    path = write_tiny_gguf(tmp_path / "Tiny-File.gguf")

    result = invoke("pull", str(path), "--url", private_url)

    try:
        assert result.exit_code == 0, result.output
        assert "saved as tiny-file:latest" in result.stdout
        assert "pulling Tiny-File.gguf: 100%" in result.stderr
        assert "tiny-file:latest" in model_names(private_client)
    finally:
        private_client.delete("tiny-file")


def test_pull_url_saves_model_under_given_name(
    private_url: str, private_client: EngineClient, registry_server: RegistryServer
) -> None:
    url = registry_server.add_file("weights.gguf", tiny_gguf(**{"general.name": "from url"}))

    result = invoke("pull", url, "--name", "fromurl:v1", "--url", private_url)

    try:
        assert result.exit_code == 0, result.output
        assert "success" in result.stderr
        assert "fromurl:v1" in model_names(private_client)
    finally:
        private_client.delete("fromurl:v1")


def test_pull_invalid_gguf_fails_and_saves_nothing(
    private_url: str, private_client: EngineClient, tmp_path: Path
) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"this is not a GGUF file")
    before = model_names(private_client)

    result = invoke("pull", str(path), "--url", private_url)

    assert result.exit_code == 1
    assert "Error:" in result.stderr
    assert model_names(private_client) == before


def test_pull_target_absolute_path_for_local_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_gguf(tmp_path / "local.gguf")
    monkeypatch.chdir(tmp_path)

    name, source = pull_target("./local.gguf", None, "http://127.0.0.1:11434")

    assert name == "local:latest"
    assert source == str(tmp_path / "local.gguf")


def test_pull_target_keeps_path_for_remote_engine(tmp_path: Path) -> None:
    name, source = pull_target("./local.gguf", None, "http://gpu-vm:11434")

    assert name == "local:latest"
    assert source == "./local.gguf"


def test_pull_target_sends_registry_name_as_model() -> None:
    assert pull_target("smollm2:135m", None, "http://127.0.0.1:11434") == ("smollm2:135m", None)


def test_pull_target_renames_registry_model() -> None:
    target = pull_target("smollm2:135m", "mine", "http://127.0.0.1:11434")

    assert target == ("mine", "smollm2:135m")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11434", True),
        ("http://localhost:11434", True),
        ("http://[::1]:11434", True),
        ("https://engine.example:11434", False),
        ("http://10.0.0.5:11434", False),
    ],
)
def test_is_loopback_url(url: str, expected: bool) -> None:
    assert is_loopback_url(url) is expected


# create


def test_create_uploads_local_gguf_and_sets_fields(
    private_url: str, private_client: EngineClient, tmp_path: Path
) -> None:
    write_tiny_gguf(tmp_path / "weights.gguf", name="upload test")
    (tmp_path / "Modelfile").write_text(
        "# a test model\n"
        "FROM ./weights.gguf\n"
        "PARAMETER num_ctx 512\n"
        "PARAMETER temperature 0.5\n"
        'PARAMETER stop "User:"\n'
        'SYSTEM """You are terse.\n'
        'Answer in one line."""\n'
        "LICENSE MIT\n"
    )

    result = invoke("create", "uploaded", "-f", str(tmp_path / "Modelfile"), "--url", private_url)

    try:
        info = private_client.show("uploaded")
        assert result.exit_code == 0, result.output
        assert "copying file" in result.stderr
        assert result.stderr.rstrip().endswith("success")
        assert info["system"] == "You are terse.\nAnswer in one line."
        assert info["license"] == "MIT"
        assert "num_ctx                        512" in info["parameters"]
        assert '"User:"' in info["parameters"]
    finally:
        private_client.delete("uploaded")


def test_create_from_model_name_sets_system(
    private_url: str, private_client: EngineClient, tmp_path: Path
) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {BUNDLED_MODEL}\nSYSTEM You are a pirate.\n")

    result = invoke("create", "pirate", "-f", str(tmp_path / "Modelfile"), "--url", private_url)
    system_output = invoke("show", "pirate", "--system", "--url", private_url)

    try:
        assert result.exit_code == 0, result.output
        assert system_output.stdout == "You are a pirate.\n"
    finally:
        private_client.delete("pirate")


def test_create_bad_modelfile_keeps_existing_model(
    private_url: str, private_client: EngineClient, tmp_path: Path
) -> None:
    for _ in private_client.create("kept", from_=BUNDLED_MODEL, system="original"):
        pass
    (tmp_path / "Modelfile").write_text(f"FROM {BUNDLED_MODEL}\nPARAMETER top_k many\n")

    result = invoke("create", "kept", "-f", str(tmp_path / "Modelfile"), "--url", private_url)

    try:
        assert result.exit_code == 1
        assert "line 2: invalid value 'many' for parameter top_k" in result.stderr
        assert private_client.show("kept")["system"] == "original"
    finally:
        private_client.delete("kept")


def test_create_rejects_unknown_base_model(private_url: str, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM no-such-base\n")

    result = invoke("create", "x", "-f", str(tmp_path / "Modelfile"), "--url", private_url)

    assert result.exit_code == 1
    assert "model 'no-such-base:latest' not found" in result.stderr


def test_create_reports_missing_gguf_path(private_url: str, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM ./absent.gguf\n")

    result = invoke("create", "x", "-f", str(tmp_path / "Modelfile"), "--url", private_url)

    assert result.exit_code == 1
    assert f"file {tmp_path / 'absent.gguf'} not found" in result.stderr


def test_create_reports_missing_modelfile(private_url: str, tmp_path: Path) -> None:
    result = invoke("create", "x", "-f", str(tmp_path / "Modelfile"), "--url", private_url)

    assert result.exit_code == 1
    assert f"Modelfile {tmp_path / 'Modelfile'} not found" in result.stderr


# cp and rm


def test_cp_then_rm_model(private_url: str, private_client: EngineClient) -> None:
    copied = invoke("cp", SHORT_MODEL, "short-copy:v2", "--url", private_url)
    names_after_copy = model_names(private_client)
    removed = invoke("rm", "short-copy:v2", "--url", private_url)

    assert copied.exit_code == 0
    assert copied.stdout == f"copied '{SHORT_MODEL}' to 'short-copy:v2'\n"
    assert "short-copy:v2" in names_after_copy
    assert removed.exit_code == 0
    assert removed.stdout == "deleted 'short-copy:v2'\n"
    assert "short-copy:v2" not in model_names(private_client)


def test_rm_deletes_remaining_models_after_unknown_one(
    private_url: str, private_client: EngineClient
) -> None:
    private_client.copy(SHORT_MODEL, "doomed")

    result = invoke("rm", "no-such-model", "doomed", "--url", private_url)

    assert result.exit_code == 1
    assert "model 'no-such-model:latest' not found" in result.stderr
    assert result.stdout == "deleted 'doomed'\n"
    assert "doomed:latest" not in model_names(private_client)


def test_cp_rejects_invalid_destination_and_keeps_source(
    private_url: str, private_client: EngineClient
) -> None:
    result = invoke("cp", SHORT_MODEL, "bad..name", "--url", private_url)

    assert result.exit_code == 1
    assert "invalid model name 'bad..name'" in result.stderr
    assert SHORT_MODEL in model_names(private_client)


def test_cp_unknown_source_fails(private_url: str, private_client: EngineClient) -> None:
    result = invoke("cp", "no-such-model", "other", "--url", private_url)

    assert result.exit_code == 1
    assert "model 'no-such-model:latest' not found" in result.stderr
    with pytest.raises(ModelNotFoundError):
        private_client.show("other")
