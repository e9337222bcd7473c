"""Extra benchmark folders add definitions and suites to the built-in ones; a name defined twice is one line."""

from __future__ import annotations

import pytest

from conftest import assert_fails_cleanly
from silc_eval.cli import main
from silc_eval.core.errors import UserError
from silc_eval.core.paths import EXTRA_BENCHMARKS_ENV, benchmarks_dir
from silc_eval.registry import benchmark_files, resolve_benchmarks, resolve_suite, suite_files


def extra_folder(tmp_path, name="my-zeroshot"):
    folder = tmp_path / "mine"
    (folder / "definitions").mkdir(parents=True)
    (folder / "suites").mkdir()
    text = (benchmarks_dir() / "definitions" / "synthscenes-zeroshot.yaml").read_text()
    (folder / "definitions" / f"{name}.yaml").write_text(text.replace("name: synthscenes-zeroshot", f"name: {name}"))
    (folder / "suites" / "mine.yaml").write_text(f"name: mine\nbenchmarks: [{name}, synthscenes-retrieval]\n")
    return folder


def test_extra_folders_add_to_the_built_in_benchmarks(tmp_path, monkeypatch):
    folder = extra_folder(tmp_path)
    built_in = benchmark_files()
    monkeypatch.setenv(EXTRA_BENCHMARKS_ENV, str(folder))
    files = benchmark_files()
    assert set(files) == set(built_in) | {"my-zeroshot"} and files["my-zeroshot"].parent == folder / "definitions"
    assert "all" in suite_files() and "mine" in suite_files()
    assert [b.name for b in resolve_suite("mine")] == ["my-zeroshot", "synthscenes-retrieval"]
    assert resolve_benchmarks(["my-zeroshot"])[0].task == "zeroshot_classification"


def test_a_name_defined_twice_or_a_missing_folder_is_one_line(tmp_path, monkeypatch, capsys):
    folder = extra_folder(tmp_path, name="synthscenes-zeroshot")
    monkeypatch.setenv(EXTRA_BENCHMARKS_ENV, str(folder))
    with pytest.raises(UserError, match="benchmark 'synthscenes-zeroshot' is defined twice"):
        benchmark_files()
    monkeypatch.setenv(EXTRA_BENCHMARKS_ENV, "")  # main() sets it; monkeypatch restores it afterwards
    assert_fails_cleanly(capsys, ["--extra-benchmarks", str(tmp_path / "nowhere"), "list", "benchmarks"],
                         r"extra benchmarks folder .*nowhere does not exist")


def test_the_command_line_flag_reaches_the_registry(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(EXTRA_BENCHMARKS_ENV, "")  # main() sets it; monkeypatch restores it afterwards
    folder = extra_folder(tmp_path)
    assert main(["--extra-benchmarks", str(folder), "list", "benchmarks"]) == 0
    assert "my-zeroshot" in capsys.readouterr().out
