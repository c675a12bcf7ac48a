"""Every input that can change a number is in a stage's record: a real rerun after each
change redoes exactly the stages it feeds (the code of a stage, the library versions)."""

from __future__ import annotations

import pytest

import pipeline.stage_inputs as stage_inputs
from eval.options import EvalSettings
from fixtures.images import write_val_set
from pipeline.options import RunOptions
from pipeline.stages import run_pipeline

pytestmark = pytest.mark.tf


@pytest.fixture
def opts(mobilenet_v1_tgz, tmp_path):
    write_val_set(tmp_path / "data", 4, layout="val_map", seed=5)
    options = RunOptions(
        model_name="mobilenet_v1",
        work_dir=tmp_path / "work",
        checkpoint_source=str(mobilenet_v1_tgz),
        data_dir=tmp_path / "data",
        evaluation=EvalSettings(batch_size=4, quiet=True),
        batch_size_given=True,
    )
    first = run_pipeline(options)
    assert first.ran["convert"] == "ran" and first.ran["evaluate"] == "ran"
    return options


def ran(state) -> set[str]:
    return {stage for stage, what in state.ran.items() if what == "ran"}


def change_code_of(package: str, monkeypatch) -> None:
    """As if ``package``'s source had been edited: every digest over it differs."""
    real = stage_inputs.source_digest

    def changed(*packages, **kwargs):
        digest = real(*packages, **kwargs)
        return digest[::-1] if package in packages else digest

    monkeypatch.setattr(stage_inputs, "source_digest", changed)


def test_a_change_to_the_preprocessing_code_re_crops_and_re_evaluates(opts, monkeypatch):
    change_code_of("preprocess", monkeypatch)
    state = run_pipeline(opts)
    assert ran(state) == {"preprocess", "evaluate"}
    assert state.ran["convert"].startswith("skipped")
    assert run_pipeline(opts).ran["evaluate"].startswith("skipped")  # recorded


def test_a_change_to_the_converter_code_reconverts(opts, monkeypatch):
    change_code_of("convert", monkeypatch)
    state = run_pipeline(opts)
    assert state.ran["convert"] == "ran" and state.ran["evaluate"] == "ran"
    assert state.ran["preprocess"].startswith("skipped")


def test_another_library_version_reconverts_and_re_evaluates(opts, monkeypatch):
    real = stage_inputs.library_versions
    monkeypatch.setattr(stage_inputs, "library_versions", lambda: {**real(), "torch": "99.0"})
    state = run_pipeline(opts)
    assert state.ran["convert"] == "ran" and state.ran["evaluate"] == "ran"
    monkeypatch.setattr(stage_inputs, "library_versions", real)
    state = run_pipeline(opts)
    assert state.ran["convert"] == "ran"  # back to the installed versions: redone again
    assert run_pipeline(opts).ran["convert"].startswith("skipped")
