"""CSV output carries participants' text: a cell a spreadsheet would run as a formula is defused."""

import pandas as pd

from harness.report import csv_safe


def test_formula_cells_get_a_leading_quote_and_numbers_stay_numbers() -> None:
    frame = pd.DataFrame({"authors": ['=HYPERLINK("http://x")', "@cmd", "Ada", None], "ppl": [1.5, -2.0, 3.0, 4.0]})
    text = csv_safe(frame).to_csv(index=False)
    assert "'=HYPERLINK" in text and "'@cmd" in text and "\nAda," in text
    assert ",-2.0" in text  # a numeric column is left alone
