"""The worst subject of an evaluation: the largest MAE of a synthetic CT, the smallest head SSIM of a synthetic MR."""

import pytest

from modality_translation.evaluation.worst_subject import worst_row


def test_the_worst_row_is_the_largest_error_or_the_smallest_similarity_and_skips_missing_values():
    rows = [{"subject": "a", "mae_hu": "120.5", "ssim_masked": "0.61"},
            {"subject": "b", "mae_hu": "nan", "ssim_masked": ""},
            {"subject": "c", "mae_hu": "310.0", "ssim_masked": "0.70"},
            {"subject": "d", "mae_hu": "95.0", "ssim_masked": "0.40"}]
    assert worst_row(rows, "mae_hu", larger_is_worse=True) == ("c", 310.0)
    assert worst_row(rows, "ssim_masked", larger_is_worse=False) == ("d", 0.40)


def test_no_finite_figure_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no subject has a finite 'mae_hu'"):
        worst_row([{"subject": "a", "mae_hu": "nan"}], "mae_hu", larger_is_worse=True)
