"""Method settings (pipeline/settings.py): every field's type and range is checked, and every
refusal is one line naming the file and the setting."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fewshot.templates import class_prompts
from pipeline.settings import Settings, SettingsError


def load(tmp_path, text: str) -> Settings:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return Settings.load(path)


def refused(tmp_path, text: str, setting: str) -> str:
    with pytest.raises(SettingsError) as e:
        load(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{tmp_path / 'settings.yaml'}: {setting}"), msg
    return msg


@pytest.mark.parametrize(
    "text, setting, expected",
    [
        ("flip_tta: 'false'", "flip_tta", "true or false"),
        ("flip_tta: 1", "flip_tta", "true or false"),
        ("amu: 'yes'", "amu", "true or false"),
        ("unseen_stage: null", "unseen_stage", "true or false"),
        ("backbones: vit", "backbones", "list"),
        ("backbones: [vit, 3]", "backbones", "list"),
        ("descriptions: [a photo of a bee., a bee.]", "descriptions", "JSON file"),
        ("descriptions: {Animal_Bee: a bee.}", "descriptions", "JSON file"),
        ("descriptions: 3", "descriptions", "JSON file"),
        ("templates: ['a photo of a {}.']", "templates", "one of"),
        ("val_unseen_share: x", "val_unseen_share", "number"),
        ("val_unseen_share: .nan", "val_unseen_share", "number"),
        ("expert_weight_decay: true", "expert_weight_decay", "number"),
        ("lpp_t_max: {vit: 2.5}", "lpp_t_max", "mapping"),
        ("name_edits: {Animal_Bee: 3}", "name_edits", "mapping"),
        ("flip_tta: auto", "flip_tta", "true or false or null"),
        ("lpp_epochs: 2.5", "lpp_epochs", "whole number"),
        ("lpp_epochs: '300'", "lpp_epochs", "whole number"),
        ("lpp_epochs: true", "lpp_epochs", "whole number"),
        ("lpp_epochs: 300.0", "lpp_epochs", "whole number"),
        ("expert_views: [2]", "expert_views", "whole number"),
        ("lpp_fusion: [0.5, 0.5]", "lpp_fusion", "mapping"),
        ("lpp_fusion: {vit: a, rn: 1}", "lpp_fusion", "mapping"),
        ("inmap_fusion: {vit: true, rn: 1}", "inmap_fusion", "mapping"),
        ("expert_domain: 3", "expert_domain", "string"),
        ("stage1: 1", "stage1", "string"),
    ],
)
def test_values_of_the_wrong_type_are_refused(tmp_path, text, setting, expected):
    msg = refused(tmp_path, text, setting)
    assert expected in msg, msg


def test_every_field_is_type_checked(tmp_path):
    # A list of lists is the wrong type for every field there is.
    for f in dataclasses.fields(Settings):
        refused(tmp_path, f"{f.name}: [[]]", f.name)


@pytest.mark.parametrize(
    "text, setting, expected",
    [
        ("lpp_epochs: 0", "lpp_epochs", ">= 1"),
        ("expert_epochs: -3", "expert_epochs", ">= 1"),
        ("expert_views: 0", "expert_views", ">= 1"),
        ("val_unseen_share: -0.5", "val_unseen_share", ">= 0"),
        ("val_unseen_share: 1", "val_unseen_share", "below 1"),
        ("expert_t_max: 0", "expert_t_max", ">= 1"),
        ("lpp_t_max: {resnet: 5}", "lpp_t_max", "backbones"),
        ("expert_eval_size: 16", "expert_eval_size", ">= 32"),
        ("expert_train_resize: 0", "expert_train_resize", ">= 32"),
        ("expert_train_crop: 400", "expert_train_crop", "expert_train_resize (320)"),
        ("lpp_fusion: {vit: 0, rn: 0}", "lpp_fusion", "positive sum"),
        ("inmap_fusion: {vit: -1, rn: 2}", "inmap_fusion", ">= 0"),
        ("lpp_fusion: {vit: .inf, rn: 1}", "lpp_fusion", "mapping"),
        ("lpp_fusion: {vit: 1}", "lpp_fusion", "each backbone"),
        ("backbones: []", "backbones", "at least one"),
        ("backbones: [vit, vit]", "backbones", "twice"),
        ("backbones: [vit, resnet]", "backbones", "'resnet'"),
        ("templates: nine", "templates", "one of"),
        ("stage1: best", "stage1", "one of challenge, official-gamma0"),
        ("seen_head: amu", "seen_head", "amu: true"),
        ("expert_integration: mix", "expert_integration", "or null"),
        ("lpp_schedule: step", "lpp_schedule", "one of"),
        ("expert_select: worst", "expert_select", "one of"),
    ],
)
def test_values_out_of_range_are_refused(tmp_path, text, setting, expected):
    msg = refused(tmp_path, text, setting)
    assert expected in msg, msg


def test_good_values_are_accepted_and_normalised(tmp_path):
    s = load(
        tmp_path,
        "backbones: [vit]\nlpp_fusion: {vit: 1}\ninmap_fusion: {vit: 2}\nval_unseen_share: 0\n"
        "flip_tta: true\nexpert_domain: null\nlpp_epochs: 2\nexpert_train_crop: 320\n"
        "lpp_t_max: {vit: 7}\nstage1: official-gamma0.5\n",
    )
    assert s.backbones == ("vit",) and s.flip_tta is True and s.expert_domain is None
    assert s.lpp_fusion == {"vit": 1.0} and isinstance(s.lpp_fusion["vit"], float)
    assert s.val_unseen_share == 0.0 and isinstance(s.val_unseen_share, float)
    assert s.lpp_t_max == {"vit": 7} and s.stage1 == "official-gamma0.5"
    assert s.lpp_epochs == 2 and s.expert_train_crop == 320
    assert load(tmp_path, "") == Settings()
    assert Settings.load(None, lpp_epochs=5).lpp_epochs == 5


def test_descriptions_file_is_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = refused(tmp_path, "templates: descriptions", "descriptions")
    assert "templates: descriptions needs" in msg
    msg = refused(tmp_path, "templates: descriptions\ndescriptions: nope.json", "descriptions")
    assert "nope.json" in msg
    (tmp_path / "bad.json").write_text('["a bee."]')
    refused(tmp_path, "templates: descriptions\ndescriptions: bad.json", "descriptions")
    (tmp_path / "d.json").write_text(json.dumps({"Animal_Bee": "a bee.", "Dog": ["a dog."]}))
    msg = refused(tmp_path, "descriptions: d.json", "descriptions")
    assert "templates: descriptions" in msg  # set, but would be ignored
    s = load(tmp_path, "templates: descriptions\ndescriptions: d.json")
    assert class_prompts(["Animal_Bee", "Animal_Dog"], s.templates, s.descriptions) == [
        ["a bee."],
        ["a dog."],
    ]


def test_descriptions_mapping_of_single_sentences_gives_one_prompt_each():
    # Not one prompt per character of the sentence.
    prompts = class_prompts(["Animal_Bee"], "descriptions", {"Animal_Bee": "a bee."})
    assert prompts == [["a bee."]]


def test_settings_file_problems_are_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "somedir"
    folder.mkdir()
    monkeypatch.setenv("SETTINGS", str(folder))
    with pytest.raises(SettingsError, match=f"^{folder}: is a folder, not a YAML file"):
        Settings.load()
    monkeypatch.delenv("SETTINGS")
    for text, match in [
        ("1: x\nflip_tta: true", "unknown settings"),
        ("- a\n- b", "expected a mapping"),
        ("a: [", "not valid YAML"),
    ]:
        with pytest.raises(SettingsError, match=match) as e:
            load(tmp_path, text)
        assert "\n" not in str(e.value), str(e.value)
    (tmp_path / "latin1.yaml").write_bytes(b"expert_domain: Caf\xe9\n")
    with pytest.raises(SettingsError, match="not UTF-8") as e:
        Settings.load(tmp_path / "latin1.yaml")
    with pytest.raises(SettingsError, match="settings file not found"):
        Settings.load(tmp_path / "missing.yaml")
