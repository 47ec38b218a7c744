"""One validation helper for every configuration object."""
from __future__ import annotations

import re

import pytest

from srrlab.measures import MeasureSettings
from srrlab.options import check_keys
from srrlab.study import SpecError, StudySpec
from srrlab.train import TrainConfig


def test_check_keys_names_every_unknown_key_and_the_valid_ones():
    check_keys({"a": 1}, ["a", "b"], "option")  # nothing unknown: no error
    with pytest.raises(ValueError) as e:
        check_keys({"z": 1, "a": 1, "y": 2}, ["b", "a"], "option")
    assert str(e.value) == "unknown options 'y', 'z'; valid: a, b"
    with pytest.raises(SpecError) as e:
        check_keys(["q"], ["by"], "key", prefix="report.", error=SpecError)
    assert str(e.value) == "unknown key 'report.q'; valid: by"


def test_every_config_uses_it():
    with pytest.raises(ValueError, match=r"^unknown training option 'lrr'; valid: .*\blr\b"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(ValueError, match=r"^unknown measure settings 'a', 'b'; valid: .*max_images"):
        MeasureSettings.from_dict({"a": 1, "b": 2})
    with pytest.raises(SpecError, match=r"^unknown top-level key 'foo'; valid: data_dir, "):
        StudySpec.from_dict({"foo": 1, "name": "x"})


@pytest.mark.parametrize("word", ["none", "None", "NULL", "off", " off "])
def test_one_none_convention(word):
    from srrlab.cli import _value
    from srrlab.options import parse_text

    def _optional_float(text):  # how `srrlab train --target-ce` reads its text
        return parse_text(TrainConfig, "target_ce", text)

    assert _value(word.strip()) is None and _optional_float(word.strip()) is None
    spec = StudySpec.from_toml(f'''name = "x"
dataset = "digits"
[fixed]
model = "crate-t-digits"
target_ce = "{word}"
[grid]
seed = [0]
''')
    assert spec.train_config(spec.points()[0]).target_ce is None
    assert _value("nonesuch") == "nonesuch" and _optional_float("0.5") == 0.5


# -- typed fields: one declaration gives type checks, text parsing and command-line flags ------------------
def test_check_types_names_the_field_and_the_expected_type():
    from srrlab.models import CRATEConfig

    for kwargs, message in [
        (dict(lr="fast"), "lr must be a finite number, got 'fast'"),
        (dict(lr=float("inf")), "lr must be a finite number, got inf"),
        (dict(batch_size=2.0), "batch_size must be an integer, got 2.0"),
        (dict(batch_size=True), "batch_size must be an integer, got True"),
        (dict(target_ce="low"), "target_ce must be a finite number or none, got 'low'"),
        (dict(model_options={"dim": "abc"}), "dim must be an integer, got 'abc'"),
        (dict(model_options={"prenorm": "maybe"}), "prenorm must be true or false, got 'maybe'"),
        (dict(model_options={"bogus": 1}), "unknown model option"),
    ]:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="^heads must be an integer, got 'four'$"):
        CRATEConfig(heads="four")
    with pytest.raises(ValueError, match="^max_images must be an integer or none, got 'abc'$"):
        MeasureSettings(max_images="abc")
    # ints are numbers; numpy scalars are accepted like Python ones; None where optional
    import numpy as np

    cfg = TrainConfig(lr=1, target_ce=None, seed=np.int64(3), warmup_epochs=np.float64(0.5))
    assert cfg.lr == 1 and cfg.seed == 3
    assert MeasureSettings(layernorm=None).layernorm == "none"  # the alias keeps working


@pytest.mark.parametrize("field, text, value", [
    ("lr", "0.5", 0.5), ("lr", "1e-3", 1e-3), ("epochs", "7", 7), ("target_ce", "NONE", None),
    ("target_ce", "0.01", 0.01), ("amp", "true", True), ("amp", "No", False), ("model", "crate-digits", "crate-digits"),
    ("augment", "crop-flip", "crop-flip"), ("srr_images", "off", None),
])
def test_parse_text_reads_each_declared_type(field, text, value):
    from srrlab.options import parse_text

    assert parse_text(TrainConfig, field, text) == value
    assert type(parse_text(TrainConfig, field, text)) is type(value)


@pytest.mark.parametrize("field, text, message", [
    ("lr", "fast", "lr must be a finite number, got 'fast'"), ("lr", "nan", "lr must be a finite number"),
    ("lr", "-inf", "lr must be a finite number"), ("epochs", "2.5", "epochs must be an integer, got '2.5'"),
    ("epochs", "none", "epochs must be an integer, got 'none'"), ("amp", "maybe", "amp must be true or false"),
])
def test_parse_text_refuses_with_the_field_name(field, text, message):
    from srrlab.options import parse_text

    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_text(TrainConfig, field, text)


def test_parse_assignments_types_values_and_names_bad_keys():
    from srrlab.models import CRATEConfig
    from srrlab.options import parse_assignments

    got = parse_assignments(["dim=128", "dropout = 0.1", "prenorm=false", "dim-head=16", "eps=none"], CRATEConfig,
                            "--set", "model option")
    assert got == {"dim": 128, "dropout": 0.1, "prenorm": False, "dim_head": 16, "eps": None}
    for items, message in [(["dim"], "--set takes KEY=VALUE, got 'dim'"), (["=3"], "--set takes KEY=VALUE"),
                           (["variant=crate"], "unknown model option 'variant'"),
                           (["heads=four"], "--set heads must be an integer, got 'four'")]:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            parse_assignments(items, CRATEConfig, "--set", "model option", exclude=["variant"])


def test_train_flags_are_generated_from_the_config_fields():
    import argparse
    import dataclasses

    from srrlab.options import add_flags

    parser = argparse.ArgumentParser()
    names = add_flags(parser, TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    # every field but the two option tables has a flag, and every flag's help is the field's
    assert set(names) == set(fields) - {"model_options", "data_options"}
    actions = {a.dest: a for a in parser._actions}
    for name in names:
        assert actions[name].help.startswith(fields[name].metadata["help"]), name
    # absent flags stay absent (the dataclass default applies); given ones are typed
    assert vars(parser.parse_args([])) == {}
    args = vars(parser.parse_args(["--lr", "0.5", "--target-ce", "none", "--amp", "--augment", "--epochs", "3"]))
    assert args == {"lr": 0.5, "target_ce": None, "amp": True, "augment": "crop-flip", "epochs": 3}
    assert TrainConfig(**args).lr == 0.5
    assert "(default 0.001)" in actions["lr"].help and "(default" not in actions["amp"].help


def test_srr_settings_have_one_owner():
    from srrlab.rate.protocol import SRR_SETTINGS

    t, m = TrainConfig(), MeasureSettings()
    for name, decl in SRR_SETTINGS.items():
        assert getattr(m, name) == decl["default"]
        assert getattr(t, name if name.startswith("srr_") else "srr_" + name) == decl["default"]


def test_a_study_grid_value_of_the_wrong_type_is_refused_naming_the_point_and_key():
    toml = 'name = "x"\ndataset = "digits"\n[fixed]\nmodel = "crate-t-digits"\n[grid]\nlr = ["fast", 0.002]\n'
    with pytest.raises(SpecError, match=re.escape("grid point {'lr': 'fast'}: lr must be a finite number, got 'fast'")):
        StudySpec.from_toml(toml)
    with pytest.raises(SpecError, match=re.escape("heads must be an integer, got 'four'")):
        StudySpec.from_toml(toml.replace('lr = ["fast", 0.002]', 'heads = ["four", 4]'))
