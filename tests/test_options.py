"""One validation helper for every configuration object."""
from __future__ import annotations

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
    from srrlab.cli import _optional_float, _value

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
