"""Reject reasons in the reader's language: every kind of reason intake writes is recognised and
said in Chinese, the column and the values inside it kept; an unknown reason is shown as stored."""

from __future__ import annotations

import pytest

from labeval.web.i18n import translator
from labeval.web.rejects import reject_reason

# Reasons exactly as intake stores them (labeval/ingest and labeval/db/intake.py).
STORED = [
    ("name: required, empty", "name：必填，但为空"),
    ("value: not a finite number", "value：不是有限数值"),
    ("replicates: not a whole number", "replicates：不是整数"),
    ("reported_on: not a date (expected YYYY-MM-DD)", "reported_on：不是日期（请写成 YYYY-MM-DD）"),
    ("reported_on: date in the future", "reported_on：日期晚于今天"),
    ("role: unknown value; expected one of original, retest, arbitration",
     "role：不在允许的取值中：original, retest, arbitration"),
    ("lab_code: unknown lab code(s): L9, L10", "lab_code：未知代码：L9, L10"),
    ("coverage_k: must be greater than 0", "coverage_k：必须大于 0"),
    ("unit: does not match the item's unit (mg/kg)", "unit：与检验项目的单位（mg/kg）不一致"),
    ("lab_code: a retest by the lab that did the original test (it must be another lab)",
     "lab_code：由原检机构出具的复检结果（必须由另一家机构出具）"),
    ("role: a arbitration with no original result for this sample and item (in the database or the file)",
     "role：此样品此项目没有初检结果（数据库和文件中均无），却有仲裁结果"),
    ("duplicate row in the file: same as row 7", "文件中的重复行：与第 7 行相同"),
    ("conflicting rows in the file: same key (sample_code, item_code) as row 3 with different values",
     "文件中的冲突行：与第 3 行键值（sample_code, item_code）相同但内容不同"),
]


@pytest.mark.parametrize(("stored", "chinese"), STORED)
def test_stored_reasons_are_said_in_chinese(stored: str, chinese: str) -> None:
    assert reject_reason(translator("zh-CN"), stored) == chinese


def test_english_readers_see_the_stored_text_and_unknown_reasons_are_shown_as_stored() -> None:
    en = translator("en")
    # As the rejects CSV and the API give them.
    assert reject_reason(en, "name: required, empty") == "name: required, empty"
    assert reject_reason(en, "lab_code: unknown lab code(s): L9") == "lab_code: unknown lab code(s): L9"
    odd = "something new: that no one translated"
    assert reject_reason(translator("zh-CN"), odd) == odd
    assert reject_reason(en, None) == "—"
