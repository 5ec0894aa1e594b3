"""kit.paper: the paper's targets, arms and how figures and tables name them."""
from kit import paper


def test_targets_and_arms_in_paper_order():
    assert list(paper.TARGETS) == ["shenzhen", "covid19_radiography", "kather2016", "messidor", "deepdrid"]
    assert [paper.TARGETS[t][3] for t in paper.TARGETS] == ["accuracy"] * 3 + ["kappa"] * 2  # Table 2's metrics
    assert paper.ARMS == ["IN", "Domain_RI", "Domain_IN", "All_RI", "All_IN"]
    assert paper.paper_sorted({"zz", "All_IN", "IN", "aa"}, paper.ARMS) == ["IN", "All_IN", "aa", "zz"]


def test_names():
    assert paper.target_title("messidor") == "D4 Messidor" and paper.target_title("my_set") == "my_set"
    assert paper.short_name("deepdrid") == "D5" and paper.short_name("my_set") == "my_set"
    assert paper.metric_label("kappa") == "Kappa Score" and paper.metric_label("f1") == "f1"
    assert paper.arm_legend_label("messidor", "Domain_IN") == "Domain_IN (EFI_IN)"
    assert paper.arm_legend_label("my_set", "Domain_IN") == "Domain_IN" and paper.arm_legend_label("shenzhen", "IN") == "IN"
    assert paper.fraction_label(0.25) == "0.25" and paper.fraction_label(1.0) == "1"
    assert paper.CURVE_SPLITS == [("train", "Training"), ("val", "Validation")]
