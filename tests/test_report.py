"""kit.report: the Markdown of Table 2 (laid out like the paper's) and report.md, as plot_results.py
writes them for hand-written runs trees; the number formats."""
import math

import pytest
from helpers import last

from kit import report


def test_table2_markdown(plain_study):
    root, written = plain_study
    text = (root / "tables" / "table2.md").read_text()
    assert "### Accuracy (%)" in text and "### Kappa Score (%)" in text
    assert text.index("### Accuracy (%)") < text.index("### Kappa Score (%)")
    assert "| Dataset |  | IN | Domain_RI | Domain_IN | All_RI | All_IN |" in text
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()}
    d4_val = [c.strip() for c in lines["D4 Messidor", "Validation"].strip("|").split("|")][2:]
    expected = ["n/a", f"{last(written['messidor', 'Domain_RI'], 'val', 'kappa'):.1f}", "n/a",
                f"{last(written['messidor', 'All_RI'], 'val', 'kappa'):.1f}", "n/a"]
    assert d4_val == expected
    assert ("D1 Shenzhen CXR", "Training") in lines and ("D3 Kather Texture 2016", "Validation") in lines
    assert "train 450 / val 66 / test 160" in text  # split sizes from OUT/manifests/shenzhen.json
    assert "### Held-out test" in text


def test_report(seeded_study):
    root, _ = seeded_study
    report = (root / "report.md").read_text()
    for part in ("## Data", "Table 2", "### Held-out test", "## Paired comparisons", "## Convergence",
                 "(figures/forest.png)", "(figures/label_efficiency.png)", "seeds 0, 1", "train fractions 0.25, 1"):
        assert part in report, part
    data = [line for line in report.splitlines() if line.startswith("| D1 Shenzhen CXR | Accuracy")][0]
    assert [c.strip() for c in data.strip("|").split("|")][2:] == ["200", "20", "60", "30"]


def test_formats():
    assert report.fmt(81.25) == "81.2" and report.fmt(0.5, 3) == "0.500" and report.fmt(math.nan) == "n/a"
    assert report.fmt(None) == "n/a"
    assert report.fmt_mean(81.25) == "81.2" and report.fmt_mean(81.25, 1.34) == "81.2 ± 1.3"
    assert report.fmt_mean(81.25, math.nan, 72.0, 90.14) == "81.2 [72.0, 90.1]"
    assert report.fmt_mean(81.25, 1.34, 72.0, 90.14) == "81.2 ± 1.3 [72.0, 90.1]"
    assert report.fmt_mean(math.nan, 1.0) == "n/a" and report.fmt_mean(1.0, 2.0, math.nan, 3.0) == "1.0 ± 2.0"
    assert report.fmt_p(0.0004) == "< 0.001" and report.fmt_p(0.0123) == "0.012" and report.fmt_p(None) == "n/a"
    assert report.markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert report.epoch_note("shenzhen", [3, 3], {"train": 450, "val": 66, "test": 160}) == \
        "D1: epoch 3, images train 450 / val 66 / test 160"
    assert report.epoch_note("my_set", [3, 2], None) == "my_set: epoch 2-3, split sizes unknown"


def test_overlap_section_says_what_was_found_what_was_done_and_what_the_arms_saw():
    import pandas as pd

    overlap_section = report.overlap_section
    found = pd.DataFrame([
        {"target": "covid19_radiography", "source": "chestxray14", "target_images": 120, "source_images": 240,
         "found": 2, "found_train": 1, "found_val": 0, "found_test": 1, "source_matched": 2, "pairs": 2},
        {"target": "covid19_radiography", "source": "covid19_radiography", "target_images": 120, "source_images": 120,
         "found": 0, "found_train": 0, "found_val": 0, "found_test": 0, "source_matched": 0, "pairs": 0}])
    record = {"match_distance": {"cxr": 0.36}}
    twins = {"covid19_radiography": {"groups": 1, "images": 2}}
    text = "\n".join(overlap_section(found, record, "drop", {"covid19_radiography": [0, 0]}, twins))
    assert "| D2 COVID-19 Radiography | chestxray14 | 2 of 120 | 1 / 0 / 1 | 2 of 240 | left out of pretraining |" in text
    assert "| D2 COVID-19 Radiography | itself | 0 of 120 | 0 / 0 / 0 |  | — |" in text
    assert "1 picture(s) there twice or more under other names (2 images), each kept in one split" in text
    assert "every arm was tested on images no pretraining saw" in text and "cxr 0.36" in text
    kept = "\n".join(overlap_section(found, record, "keep", {"covid19_radiography": [1, None]}, {}))
    assert "**kept in pretraining** (overlap: keep" in kept and "not every evaluation was checked" in kept
    seen = "\n".join(overlap_section(found, record, "keep", {"covid19_radiography": [1, 0]}, {}))
    assert "**D2 COVID-19 Radiography: up to 1 test image(s) were seen in pretraining**" in seen
    assert "Not checked" in "\n".join(overlap_section(None, None, None, {}, {}))

def test_too_few_test_patients_print_the_estimate_alone():
    assert report.fmt_test(36.4, math.nan, 0.0, 36.4, fewest=2) == "36.4 (too few test patients for an interval)"
    assert report.fmt_test(36.4, math.nan, 0.0, 36.4, fewest=2, mark=True) == "36.4 ‡"
    assert report.too_few_note([12, 2, None])[1].startswith("‡ too few test patients for an interval: fewer than 10")
    assert report.too_few_note([12, None]) == []
    assert report.fmt_test(36.4, 1.0, 20.0, 50.0, fewest=12) == "36.4 ± 1.0 [20.0, 50.0]"
    assert report.fmt_test(36.4, math.nan, 20.0, 50.0, fewest=None) == "36.4 [20.0, 50.0]"


def test_an_interval_ending_at_0_next_to_a_large_p_says_why(tmp_path):
    """One seed, two networks that differ on one test image of 40: most resamples give a difference of exactly 0,
    so the percentile interval ends at 0 while p is large; the report says why, next to the row."""
    import pandas as pd
    from helpers import plot, write_claim_run

    for arm in ("IN", "Domain_RI"):
        write_claim_run(tmp_path, "shenzhen", arm, [0.5] * 5, [0.6] * 5, 0.5, n_test=40)
    for kind in ("best", "last"):
        path = tmp_path / "eval" / "shenzhen" / "Domain_RI" / "seed0" / kind / "predictions.csv"
        frame = pd.read_csv(path)
        wrong = frame.index[frame["pred"] != frame["target"]][0]
        frame.loc[wrong, "pred"] = frame.loc[wrong, "target"]
        right = frame.loc[wrong, "target"]
        frame.loc[wrong, [c for c in frame.columns if c.startswith("prob_")]] = 0.02
        frame.loc[wrong, f"prob_{right}"] = 0.98
        frame.to_csv(path, index=False)
    plot(tmp_path, tmp_path, "--bootstrap", "2000")
    paired = pd.read_csv(tmp_path / "tables" / "paired.csv").query("method != 'DeLong' and checkpoint == 'last'")
    row = paired.iloc[0]
    assert row["difference"] == pytest.approx(2.5) and row["ci_low"] == 0 and row["p_value"] > 0.5
    text = (tmp_path / "report.md").read_text()
    line = [line for line in text.splitlines() if line.startswith("| D1 Shenzhen CXR | Domain_RI − IN | 1 |")][0]
    assert line.split("|")[4].strip() == f"2.5 [0.0, {row['ci_high']:.1f}] †"
    assert f"† {report.DISCRETE}" in text


def test_the_data_line_without_study_json_says_what_the_manifests_record():
    """Stages run by hand leave no study.json: the Data line comes from the manifests' JSON (prepare_data.py copies
    the DEMO_DATA.json of generated demo data into it; None: not generated; absent: an older manifest)."""
    drawn = {"generated": True, "generator": "tools/make_demo_data.py", "seed": 0, "scale": 1.0}
    line = report.data_line({"chestxray14": {"root": "/d/chestxray14", "demo_data": drawn},
                             "shenzhen": {"root": "/d/shenzhen", "demo_data": drawn}})
    assert line.startswith("- **Data: generated demo data** (seed 0, scale 1) — the kit's tools/make_demo_data.py, "
                           "not real images") and "mean nothing about medicine" in line
    line = report.data_line({"chestxray14": {"root": "/d/c", "demo_data": {**drawn, "seed": 1, "scale": 0.3}},
                             "shenzhen": {"root": "/d/s", "demo_data": drawn}})
    assert "(seed 1, scale 0.3: chestxray14; seed 0, scale 1: shenzhen)" in line
    line = report.data_line({"shenzhen": {"root": "/data/shenzhen", "demo_data": None}})
    assert line.startswith("- Data: read from shenzhen `/data/shenzhen`") and "none is the kit's generated" in line
    for nothing in ({}, None, {"shenzhen": {"root": "/data/shenzhen"}}):
        assert report.data_line(nothing).startswith("- **Data: unknown**")
    line = report.data_line({"chestxray14": {"root": "/d/c", "demo_data": drawn},
                             "mytask": {"root": "/data/labels.csv", "demo_data": None}, "shenzhen": {"root": "/d/s"}})
    assert line.startswith("- **Data: mixed**") and "generated demo data for chestxray14" in line
    assert "read from mytask `/data/labels.csv`" in line and "unknown for shenzhen" in line
    # with study.json the workflow's record speaks, whatever the manifests say
    lines = report.what_was_run({"demo": True, "demo_scale": 0.3}, {"shenzhen": {"IN"}}, ["shenzhen"], [0], "", None,
                                "last", manifests={"shenzhen": {"root": "/d/s", "demo_data": None}})
    assert "- **Data: synthetic demo data** (tools/make_demo_data.py, scale 0.3)" in "\n".join(lines)
