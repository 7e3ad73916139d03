"""The bar a class erasure is judged by, and the line a run ends with."""

from erase.eval.verdict import FID_TOLERANCE, class_forgotten, verdict


def test_the_bar_is_inclusive_at_both_limits():
    assert class_forgotten(0.05, 0.98, 1.0)  # 1.0 - 0.98 is 0.020000000000000018 in floats
    assert not class_forgotten(0.06, 1.0, 1.0)
    assert not class_forgotten(0.0, 0.97, 1.0)
    assert class_forgotten(0.0, 1.0, 0.99)  # the other classes may improve


def test_verdict_names_what_went_wrong():
    before = {"fa": 1.0, "remaining_accuracy": 0.997}
    assert verdict(before, {"fa": 0.0, "remaining_accuracy": 0.986}, 50).startswith("forgotten: FA 0.00")
    assert "lost 1.1 points" in verdict(before, {"fa": 0.0, "remaining_accuracy": 0.986}, 50)
    assert verdict(before, {"fa": 0.27, "remaining_accuracy": 0.99}, 50).startswith("not forgotten yet: FA 0.27")
    assert "over the tolerance" in verdict(before, {"fa": 0.0, "remaining_accuracy": 0.9}, 50)
    assert verdict({"fa": None, "remaining_accuracy": None}, {"fa": None, "remaining_accuracy": None}, 5) is None


def test_advice_names_gamma_only_for_the_fisher_mask():
    before, after = {"fa": 1.0, "remaining_accuracy": 1.0}, {"fa": 0.0, "remaining_accuracy": 0.8}
    assert "sfron.gamma" in verdict(before, after, 3)
    assert "sfron.gamma" not in verdict(before, after, 3, fisher_mask=False)


def test_the_other_classes_fid_is_part_of_the_bar_when_measured():
    assert class_forgotten(0.0, 1.0, 1.0, fid_after=FID_TOLERANCE * 20.0, fid_before=20.0)  # inclusive
    assert not class_forgotten(0.0, 1.0, 1.0, fid_after=35.1, fid_before=17.3)  # the demo digit's 2×
    assert class_forgotten(0.0, 1.0, 1.0, fid_after=35.1, fid_before=None)  # unmeasured: not judged
    before, after = {"fa": 1.0, "remaining_accuracy": 0.997, "fid": 17.3}, {"fa": 0.0, "remaining_accuracy": 0.986, "fid": 35.1}
    line = verdict(before, after, 50)
    assert line.startswith("forgotten (FA 0.00), but") and "FID 17.3 → 35.1" in line and "FID × 1.25" in line
    assert verdict(before, {**after, "fid": 20.0}, 50).startswith("forgotten: FA 0.00")
