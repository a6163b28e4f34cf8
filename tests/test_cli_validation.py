"""No traceback for any input: every option of every command, fed generated bad values through ``main``
in process, ends with exit status 2 and a single ``error:`` line naming the option (no model is loaded)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from lpmr_edge.cli import BAD_INPUT_EXIT, app, main
from lpmr_edge.cli import params as p
from lpmr_edge.cli import support as support_cli

BAD_VALUES = {  # parser -> values it must refuse ({dir}, {file}: an existing directory and file)
    p.POSITIVE_INT: ["0", "-2", "x", "1.5", ""], p.SEED: ["-1", str(p.SEED_LIMIT), "seed"],
    p.RESAMPLES: ["9", "0", "many"], p.POSITIVE_SECONDS: ["0", "-1", "inf", "nan", "x"],
    p.DURATION: ["0s", "-1", "soon", "30x", "1h 30m"],
    p.LIMIT_MS: ["-1", "inf", "nan", "x"], p.LIMIT_MB: ["-1", "inf", "x"], p.PERCENTAGE_POINTS: ["-0.5", "101", "nan"],
    p.FRACTION: ["0", "1", "1.5", "x"], p.SHARE: ["0", "1.01", "x"], p.SMOOTH_QUANT_ALPHA: ["1.5", "-0.5", "x"],
    p.GROUP_SIZE: ["0", "-2", "x"], p.LOGIT_SCALE: ["0", "-5", "nan", "big"],
    p.EXISTING_DIR: ["{dir}/absent", "{file}", ""], p.EXISTING_FILE: ["{dir}/absent.toml", "{dir}"],
    p.EXISTING_PATH: ["{dir}/absent"], p.OUTPUT_DIR: ["{file}", "{file}/below"], p.OUTPUT_FILE: ["{dir}", "{file}/below"],
    p.MODEL_SPEC: ["", "random:", "nonsense", ":tag"], p.SUITE: ["nope", "{dir}/absent.toml"],
    p.TARGET: ["nope", "{dir}/absent.toml"], p.DEVICE: ["foo://x", "ssh://", "ssh://h:99999"],
    p.DATASET: ["nope", "folder:{dir}/absent", "calib:nope", "waterbirds:"], p.RAY_ADDRESS: ["foo", "h:port"],
    p.OBJECTIVE: ["nope", "", "ece:textiles"], p.ARCHITECTURE: ["", ":tag", "random:"],
    p.TUNE_OBJECTIVE: ["nope", "", "ece:textiles", "worst_group:x"], p.LATENCY_RATIO: ["0", "-1", "inf", "x"],
    p.SUPPORT_CELL: ["openvino", "openvino:int3", "tflite:fp32"], support_cli.PARITY_IMAGES: ["0", "10001", "x"], p.MARGIN: ["ece", "ece=x", "speed=1", "top1=-1pp"],
    **{choice: ["nope", ""] for choice in (p.RUNTIME, p.EXPORT_RUNTIME, p.PRESET, p.PRECISION, p.TOWER,
                                          p.RUNNER, p.ENGINE, p.EXPORT_FORMAT, p.STANDIN)},
}
VALID = {p.EXISTING_DIR: "{dir}", p.EXISTING_PATH: "{dir}", p.EXISTING_FILE: "{file}", p.TARGET: "x86",
         p.DEVICE: "local"}  # values for the required parameters besides the one under test


def _commands(command, path: list[str]) -> Iterator[tuple[list[str], object]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, [*path, name])
    else:
        yield path, command


def _cases() -> Iterator[tuple[str, list[str], object, object, str]]:
    """(case id, command path, the command, the parameter under test, bad value)."""
    root = typer.main.get_command(app)
    for path, command in [([], root), *_commands(root, [])]:
        for param in command.params:
            if param.name == "help" or (path == [] and param.name in ("install_completion", "show_completion")):
                continue
            if getattr(param, "is_flag", False):
                values = ["=x"]  # a flag given a value
            else:
                values = BAD_VALUES[param.type_descriptor.parameter_info.parser]
            for value in values:
                yield f"{' '.join(path) or 'lpmr-edge'}:{param.name}={value!r}", path, command, param, value


CASES = list(_cases())


def _argv(path: list[str], command, param, value: str, fill: dict[str, str]) -> list[str]:
    def given(parameter, text: str) -> list[str]:
        text = text.format(**fill)
        if getattr(parameter, "is_flag", False):
            return [f"{parameter.opts[0]}{text}"]
        return [parameter.opts[0], text] if parameter.param_type_name == "option" else [text]

    required = [q for q in command.params if q.required and q is not param]
    rest = [arg for q in required for arg in given(q, VALID[q.type_descriptor.parameter_info.parser])]
    tested = given(param, value)
    return [*tested, "targets"] if not path else [*path, *rest, *tested]  # global options precede a command


def test_the_table_covers_every_command_and_level():
    assert len(CASES) > 150 and {len(case[1]) for case in CASES} == {0, 1, 2}
    tested = {" ".join(case[1]) for case in CASES}
    assert {"eval", "export", "bench", "run", "pick", "report", "compare", "sweep run", "device setup"} <= tested


@pytest.mark.parametrize("case, path, command, param, value", CASES, ids=[case[0] for case in CASES])
def test_bad_value_is_one_error_line_and_exit_2(case, path, command, param, value, tmp_path: Path, capsys,
                                               monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LPMR_EDGE_LOG", str(tmp_path / "lpmr-edge.log"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    argv = _argv(path, command, param, value, {"dir": str(tmp_path / "a-dir"), "file": str(tmp_path / "a-file")})
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exited.value.code == BAD_INPUT_EXIT, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, captured.err)
    assert "Traceback" not in captured.err + captured.out
    if param.param_type_name == "option":
        assert any(opt in lines[0] for opt in param.opts), (argv, lines[0])
