"""Workspace.record: what train.json and test.json report about time and memory."""

from __future__ import annotations

import types

from pipeline.workspace import Workspace


def test_model_loads_are_charged_to_the_steps_that_made_them_nested_ones_included():
    vit = types.SimpleNamespace(load_seconds=0.0)
    ws = Workspace(env=None, settings=None, classes=None, cache=None, backbones={"vit": vit})
    with ws.timed("text classifiers"):
        vit.load_seconds += 2.0  # the first use loads the model
    with ws.timed("expert"):
        with ws.timed("features val-expert convnext"):
            ws._convnext = types.SimpleNamespace(load_seconds=3.0)
    with ws.timed("features test"):
        pass
    rec = ws.record()
    assert rec["model_load_seconds"] == {"vit": 2.0, "convnext": 3.0}
    assert rec["model_load_seconds_in_steps"] == {
        "text classifiers": 2.0,
        "features val-expert convnext": 3.0,
        "expert": 3.0,
    }
    assert set(rec["timings"]) == {
        "text classifiers",
        "expert",
        "features val-expert convnext",
        "features test",
    }
    assert rec["peak_rss_mb"] > 0
