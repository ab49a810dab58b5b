"""Reject reasons in the reader's language: every kind of reason intake writes is said in Chinese by
its stored code, the column and the values inside it kept; a line without a code is shown as stored."""

from __future__ import annotations

import pytest

from labeval.db.imports import CodedReject
from labeval.ingest import reasons
from labeval.web.i18n import translator
from labeval.web.rejects import MESSAGES, reject_reason

# Reasons as intake stores them (labeval/ingest and labeval/db/intake.py): column, code, arguments,
# the English text (as it was stored before codes were, and still is), and the Chinese page's words.
STORED = [
    ("name", "required", {}, "name: required, empty", "name：必填，但为空"),
    ("value", "not_finite", {}, "value: not a finite number", "value：不是有限数值"),
    ("replicates", "not_whole_number", {}, "replicates: not a whole number", "replicates：不是整数"),
    ("reported_on", "not_date", {}, "reported_on: not a date (expected YYYY-MM-DD)",
     "reported_on：不是日期（请写成 YYYY-MM-DD）"),
    ("reported_on", "future_date", {}, "reported_on: date in the future", "reported_on：日期晚于今天"),
    ("role", "unknown_value", {"allowed": "original, retest, arbitration"},
     "role: unknown value; expected one of original, retest, arbitration",
     "role：不在允许的取值中：original, retest, arbitration"),
    ("lab_code", "unknown_codes", {"what": "lab", "codes": "L9, L10"}, "lab_code: unknown lab code(s): L9, L10",
     "lab_code：未知代码：L9, L10"),
    ("coverage_k", "greater_than", {"min": "0"}, "coverage_k: must be greater than 0", "coverage_k：必须大于 0"),
    ("unit", "unit_mismatch", {"unit": "mg/kg"}, "unit: does not match the item's unit (mg/kg)",
     "unit：与检验项目的单位（mg/kg）不一致"),
    ("lab_code", "by_original_lab", {"role": "retest"},
     "lab_code: a retest by the lab that did the original test (it must be another lab)",
     "lab_code：由原检机构出具的复检结果（必须由另一家机构出具）"),
    ("lab_code", "retest_by_arbitration_lab", {},
     "lab_code: a retest by the lab that did the arbitration (it must be another lab)",
     "lab_code：由仲裁机构进行的复检（必须由另一家机构进行）"),
    ("role", "no_original", {"role": "arbitration"},
     "role: a arbitration with no original result for this sample and item (in the database or the file)",
     "role：此样品此项目没有初检结果（数据库和文件中均无），却有仲裁结果"),
    ("sample_code, item_code", "duplicate_row", {"row": "7"}, "duplicate row in the file: same as row 7",
     "文件中的重复行：与第 7 行相同"),
    ("sample_code, item_code", "conflicting_rows", {"key": "sample_code, item_code", "row": "3"},
     "conflicting rows in the file: same key (sample_code, item_code) as row 3 with different values",
     "文件中的冲突行：与第 3 行键值（sample_code, item_code）相同但内容不同"),
]


def _reject(column: str | None, code: str | None, args: dict[str, str] | None, reason: str) -> CodedReject:
    return CodedReject(row=2, column=column, value="x", reason=reason, reason_code=code, reason_args=args)


@pytest.mark.parametrize(("column", "code", "args", "stored", "chinese"), STORED)
def test_stored_reasons_are_said_in_chinese_by_their_code(column, code, args, stored, chinese) -> None:
    # The English text made from the code is the text intake always stored.
    assert reasons.text(column, code, args) == stored
    assert reject_reason(translator("zh-CN"), _reject(column, code, args, stored)) == chinese
    # By the code, not the words: the same code says the same thing whatever the stored text.
    assert reject_reason(translator("zh-CN"), _reject(column, code, args, "(reworded) " + stored)) == chinese


def test_every_reason_code_has_a_message_and_every_message_a_code() -> None:
    assert set(MESSAGES) == set(reasons.TEXTS)
    zh = translator("zh-CN")
    for code, text in reasons.TEXTS.items():
        args = {f: "X" for f in ("allowed", "what", "codes", "min", "unit", "row", "key") if "{" + f + "}" in text}
        if "{role}" in text:
            args["role"] = "retest"
        said = reject_reason(zh, _reject("col", code, args, reasons.text("col", code, args)))
        # Said in Chinese: not the English text, and the arguments kept.
        assert said != reasons.text("col", code, args), code
        assert all(v in said for k, v in args.items() if k not in ("role", "what")), code


def test_english_readers_see_the_stored_text_and_lines_without_a_code_are_shown_as_stored() -> None:
    en = translator("en")
    # As the rejects CSV and the API give them.
    stored = "lab_code: unknown lab code(s): L9"
    assert reject_reason(en, _reject("lab_code", "unknown_codes", {"what": "lab", "codes": "L9"}, stored)) == stored
    # A line stored before reason codes, or of a code this page does not know: as stored.
    for code in (None, "something_new"):
        assert reject_reason(translator("zh-CN"), _reject("name", code, None, "name: required, empty")) == (
            "name: required, empty")
    assert reject_reason(en, _reject(None, None, None, "")) == "—"
