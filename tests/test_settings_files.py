"""The shipped settings files: default.yaml is the defaults; challenge.yaml is the challenge
solution's recipe, value for value (Daheilou/jittor-few-shot-clip-B, ALGORITHMS.md 7 and 7b)."""

from __future__ import annotations

from pipeline.env import REPO_ROOT
from pipeline.settings import Settings


def test_default_yaml_is_the_defaults():
    assert Settings.load(REPO_ROOT / "settings" / "default.yaml") == Settings()


def test_challenge_yaml_is_the_challenge_solutions_recipe():
    s = Settings.load(REPO_ROOT / "settings" / "challenge.yaml")
    recipe = {
        # its own 4-shot list, the two CLIP backbones, its prompts and its two renamed classes
        "shot_list": "data/seed_train_4shot.txt",
        "backbones": ("vit", "rn"),
        "templates": "challenge",
        "name_edits": {
            "Stanford-Cars_Audi_TTS_Coupe_2012": "Audi_TTS_Coupe_2012_Sporty_Elegant",
            "Stanford-Cars_Audi_R8_Coupe_2012": "Audi_R8_Coupe_2012_Exotic_Premium",
        },
        # its choices: flips (random there, averaged here), bare names, its InMaP variant,
        # LP++ on unaugmented features, the expert's ranking replacing stage 2's, no TransCLIP
        "flip_tta": True,
        "inmap_prompts": "bare",
        "stage1": "challenge",
        "lpp_views": "orig",
        "seen_head": "lpp",
        "expert_integration": "switch",
        "transclip": "off",
        "unseen_stage": True,
        "inmap_fusion": {"vit": 0.5, "rn": 0.5},
        # few_lp.py + train.sh
        "lpp_fusion": {"vit": 0.6, "rn": 0.4},
        "lpp_epochs": 1000,
        "lpp_learn_alpha": False,
        "lpp_schedule": "jittor-cosine",
        "lpp_t_max": {"vit": 1000, "rn": 500},
        "lpp_strict_best": True,
        "lpp_bias_init": "uniform",
        "amu": False,
        # train_dog.py + test.py
        "expert_domain": "Thu-dog",
        "expert_epochs": 31,
        "expert_views": 31,
        "expert_eval_size": 384,
        "expert_train_resize": 320,
        "expert_train_crop": 280,
        "expert_resample": "bilinear",
        "expert_weight_decay": 0.0,
        "expert_schedule": "jittor-cosine",
        "expert_t_max": 15,
        "expert_eta_min": 1e-5,
        "expert_select": "last",
    }
    assert {k: getattr(s, k) for k in recipe} == recipe
    # the shot list it names is the shipped one
    assert (REPO_ROOT / s.shot_list).is_file()
