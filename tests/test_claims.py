"""kit.claims: the paper's claims (Sections 5.3 and 7) as rules, checked on FABRICATED studies whose truth
is known: every claim reaches each of its four outcomes, Holm decides, one seed never supports, the rate of
false "supported" over simulated studies of three seeds stays at most 5 % with the power stated, and a
whole study through plot_results.py (runs and evaluation folders written by hand as kit/results.py reads
them) gives the verdicts it was built for."""
import copy

import numpy as np
import pandas as pd
import pytest
from helpers import (
    claim_inputs,
    curve_inputs,
    write_claim_run,
    write_split_sizes,
    write_study_json,
)

import plot_results
from kit import claims, paper, stats, tables
from kit.report import TABLE_WIDTH

ARMS = paper.ARMS
D = {"shenzhen": "D1", "covid19_radiography": "D2", "kather2016": "D3", "messidor": "D4", "deepdrid": "D5"}
EQUAL = {t: {a: (80.0 if t in claims.D1_D3 else 50.0) for a in ARMS} for t in D}

# Validation / training curves (10 epochs, fractions of the headline metric).
SMOOTH = [0.80, 0.88, 0.89, 0.90, 0.90, 0.91, 0.91, 0.91, 0.91, 0.91]        # reaches 86.5 % at epoch 2, no drop
PEAKED = [0.80, 0.88, 0.90, 0.93, 0.95, 0.93, 0.92, 0.92, 0.91, 0.91]        # best at epoch 5, last 0.91, drop 2 pp
UNSTEADY = [0.50, 0.55, 0.60, 0.70, 0.62, 0.75, 0.80, 0.82, 0.86, 0.88]      # reaches 86.5 % only at epoch 10
DITCHES = [0.20, 0.40, 0.10, 0.45, 0.15, 0.50, 0.48, 0.50, 0.49, 0.50]       # drops of up to 30 pp
FLAT_TRAIN = [0.60, 0.80, 0.90, 0.95, 0.97, 0.98, 0.99, 0.99, 0.99, 0.99]    # levelled off
RISING_TRAIN = [0.10, 0.19, 0.28, 0.37, 0.46, 0.55, 0.64, 0.73, 0.82, 0.91]  # still rising: +36 pp over the last third
LEVEL_TRAIN = [0.30, 0.50, 0.60, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70]   # IN levelled off at a low value


def changed(base, **changes):
    """A copy of {target: {arm: value}} with {target: {arm: value}} changes."""
    values = copy.deepcopy(base)
    for target, by_arm in changes.items():
        values[target] |= by_arm
    return values


def judged(values=None, measures=None, val_curves=None, n_seeds=3, curve_sd=0.0, sizes=True, **paired_options):
    """claims.verdicts on hand-made inputs: {(claim, dataset): row}."""
    paired, arms_run = claim_inputs(values or {}, n_seeds=n_seeds, **paired_options)
    convergence, curves, split_sizes = curve_inputs(measures, val_curves, n_seeds=n_seeds, sd=curve_sd)
    arms_run = {t: set(ARMS) for t in curves} | arms_run
    found = claims.verdicts(paired, convergence, arms_run, alpha=0.05, curves=curves,
                            sizes=split_sizes if sizes else None, missing_reason="no ImageNet weights")
    return {(r["claim"], r["dataset"]): r for r in found.to_dict("records")}


def verdict(found, claim, dataset):
    return found[claim, dataset]["verdict"]


# --------------------------------------------------------------------------- the paper's own table

def test_the_papers_table_against_its_text():
    """Put through the claims' rules, Table 2 disagrees with the text where the issue says it does."""
    said = {(c.key, t): claims.paper_table_verdict(c, t) for c in claims.CLAIMS for t in c.scope}
    assert said["c", "shenzhen"][0] == said["c", "covid19_radiography"][0] == "contradicted"  # Dom IN >= Dom RI
    assert said["c", "kather2016"][0] == "supported"
    assert said["b", "shenzhen"][0] == "supported" and said["b", "covid19_radiography"][0] == "contradicted"
    assert said["a", "covid19_radiography"][0] == "supported" and said["a", "shenzhen"][0] == "inconclusive"  # a tie
    assert said["f", "deepdrid"][0] == "supported" and said["d1", "shenzhen"] is None
    # "IN shows the least performance": not on D2 (96.5 > Domain_RI 95.9) nor D3 (95.1 > Domain_RI 93.9)
    assert [said["g", t][0] for t in claims.D1_D3] == ["supported", "contradicted", "contradicted"]
    # All_* best: an All arm above IN, Domain_RI and Domain_IN only on D2; D4 IN 52.1 beats every All arm
    assert [said["h", t][0] for t in D] == ["inconclusive", "supported", "inconclusive", "contradicted",
                                            "contradicted"]
    # Domain_RI competing within 2 points of accuracy (2.9 / 2.8 of kappa): not on D4 (38.8 vs IN 52.1)
    assert [said["j", t][0] for t in D] == ["supported", "supported", "supported", "contradicted", "supported"]
    assert said["k", "messidor"][0] == "contradicted"  # "nearly equal": 33.6 to 52.1 is not within 2.9 points
    table = claims.verdicts(pd.DataFrame(columns=["method"]), pd.DataFrame(columns=["target", "arm"]), {}, 0.05)
    across = table[table["target"] == "all"].set_index("claim")["paper_table"]
    assert across["h"] == "disagrees (1 of 5 agree)" and across["j"] == "agrees (4 of 5 agree)"


def test_margins_are_stated_and_scaled_for_kappa():
    assert claims.margin("shenzhen", "accuracy") == claims.MARGIN == 2.0
    # the same number of changed decisions on a kappa: 2 / (1 - chance agreement of Table 1's grades)
    assert claims.margin("messidor", "kappa") == round(2 / (1 - paper.chance_agreement("messidor")), 1) == 2.9
    assert claims.margin("deepdrid", "kappa") == 2.8 and claims.margin("my_set", "kappa") == 2.0


# --------------------------------------------------------------------------- each claim, each outcome

PERFORMANCE = {  # claim: (supported, contradicted, inconclusive) designs, the dataset the verdict is read on
    "a": ("D1", changed(EQUAL, shenzhen={"All_IN": 90}), changed(EQUAL, shenzhen={"IN": 90}), EQUAL),
    "b": ("D1", changed(EQUAL, shenzhen={"Domain_RI": 90, "Domain_IN": 90}), changed(EQUAL, shenzhen={"IN": 90}),
          EQUAL),
    "c": ("D3", changed(EQUAL, kather2016={"Domain_IN": 90}), changed(EQUAL, kather2016={"Domain_RI": 90}), EQUAL),
    "f": ("D5", changed(EQUAL, deepdrid={"All_IN": 60, "Domain_RI": 60, "Domain_IN": 60}),
          changed(EQUAL, deepdrid={"IN": 60}), EQUAL),
    "g": ("D2", changed(EQUAL, covid19_radiography={a: 90 for a in claims.MEDICAL}),
          changed(EQUAL, covid19_radiography={"IN": 90}), EQUAL),
    "h": ("D1-D5", {t: by_arm | {"All_IN": by_arm["All_IN"] + 10} for t, by_arm in EQUAL.items()},
          changed(EQUAL, shenzhen={"IN": 90}, kather2016={"IN": 90}), EQUAL),
    "i": ("D1-D5", {t: by_arm | {"All_RI": by_arm["All_RI"] + 10} for t, by_arm in EQUAL.items()},
          changed(EQUAL, deepdrid={"IN": 60}), EQUAL),
    "j": ("D1-D5", EQUAL, changed(EQUAL, shenzhen={"Domain_RI": 70}, messidor={"Domain_RI": 40}), "wide"),
    "k": ("D4", EQUAL, changed(EQUAL, messidor={"IN": 60}), "wide"),
}


@pytest.mark.parametrize("claim", sorted(PERFORMANCE))
def test_every_performance_claim_reaches_each_outcome(claim):
    dataset, supported, contradicted, inconclusive = PERFORMANCE[claim]
    assert verdict(judged(supported), claim, dataset) == "supported"
    assert verdict(judged(contradicted), claim, dataset) == "contradicted"
    if inconclusive == "wide":  # equal in truth, measured too coarsely to show the margin either way
        assert verdict(judged(EQUAL, se=5.0), claim, dataset) == "inconclusive"
    else:
        assert verdict(judged(inconclusive), claim, dataset) == "inconclusive"
    one_seed = judged(supported, n_seeds=1)[claim, dataset]  # one network per arm: never a verdict
    assert one_seed["verdict"] == "not tested" and one_seed["this_run"] == "agrees"
    assert one_seed["replication"] == claims.ONE_NETWORK
    if "-" not in dataset:
        assert claims.ONE_NETWORK in one_seed["evidence"] and "this run: " in one_seed["evidence"]
    missing = {t: {a: v for a, v in by_arm.items() if a != "Domain_IN"} for t, by_arm in supported.items()}
    assert judged(missing)[claim, dataset]["verdict"] == "not tested"  # every one of these claims needs Domain_IN


def test_the_some_all_arm_rule_and_its_contradicted_branch():
    # one All arm beaten (IN above All_RI) while All_IN is best: still supported
    found = judged(changed(EQUAL, shenzhen={"All_IN": 95, "IN": 90}))
    assert verdict(found, "a", "D1") == "supported"
    # each All arm has some other arm shown better than it (IN above All_RI, Domain_IN above All_IN): contradicted
    found = judged(changed(EQUAL, shenzhen={"IN": 90, "Domain_IN": 90}))
    assert verdict(found, "a", "D1") == "contradicted"
    # only one All arm beaten, the other level with the rest: inconclusive
    found = judged(changed(EQUAL, shenzhen={"IN": 90, "All_RI": 90}))
    assert verdict(found, "a", "D1") == "inconclusive"


def test_across_targets_count_and_not_tested():
    # only D1-D3 run: "almost every dataset" (4 of 5) can no longer be reached
    found = judged({t: EQUAL[t] | {"All_IN": 90.0} for t in claims.D1_D3})
    assert verdict(found, "h", "D1-D5") == "not tested"
    assert "supported on D1, D2, D3" in found["h", "D1-D5"]["evidence"]
    # 4 of 5 supported, D5 inconclusive: "almost every" yes, "all" no
    found = judged({t: by_arm | ({"All_IN": by_arm["All_IN"] + 10} if t != "deepdrid" else {})
                    for t, by_arm in EQUAL.items()})
    assert verdict(found, "h", "D1-D5") == "supported" and verdict(found, "i", "D1-D5") == "inconclusive"
    # each target is tested at alpha / 5: a difference shown at 0.05 but not at 0.01 does not count
    modest = judged({t: by_arm | {"All_IN": by_arm["All_IN"] + 1.2} for t, by_arm in EQUAL.items()}, se=0.4,
                    seed_sd=0.0)
    assert verdict(modest, "a", "D1") == "supported" and verdict(modest, "h", "D1") == "inconclusive"


def test_raw_p_below_alpha_but_holm_above_reads_inconclusive():
    override = {("shenzhen", "Domain_IN", "Domain_RI"): {"difference": -3.0, "p_value": 0.02}}
    paired, _ = claim_inputs(EQUAL, overrides=override)
    row = paired[(paired["arm"] == "Domain_IN") & (paired["reference"] == "Domain_RI")
                 & (paired["target"] == "shenzhen")].iloc[0]
    assert row["p_value"] < 0.05 <= row["p_holm"] and row["holm_m"] == 10  # 10 x 0.02, corrected for 10
    assert verdict(judged(EQUAL, overrides=override), "c", "D1") == "inconclusive"
    # the same comparison alone on its target: Holm corrects for the one comparison run
    alone = {"shenzhen": {"Domain_RI": 80.0, "Domain_IN": 80.0}}
    paired, _ = claim_inputs(alone, overrides=override)
    assert paired["holm_m"].tolist() == [1] and paired["p_holm"].tolist() == [0.02]
    assert verdict(judged(alone, overrides=override), "c", "D1") == "supported"


def test_too_few_test_patients_leave_the_claims_not_tested():
    found = judged(changed(EQUAL, shenzhen={"All_IN": 90}), min_class_patients=3)
    row = found["a", "D1"]
    assert row["verdict"] == "not tested" and "too few test patients for an interval (fewest per class 3 < 10)" \
        in row["evidence"]


CURVES = {  # claim: dataset, (supported, contradicted, inconclusive) as measures or validation curves
    "d1": ("D1", {"shenzhen": {"IN": UNSTEADY} | {a: SMOOTH for a in claims.MEDICAL}},
           {"shenzhen": {"IN": SMOOTH} | {a: UNSTEADY for a in claims.MEDICAL}},  # the wrong way: IN earlier
           {"shenzhen": {a: SMOOTH for a in ARMS}}),
    "d2": ("D1", {"shenzhen": {"IN": {"max_drop": 10.0}} | {a: {"max_drop": 0.0} for a in claims.MEDICAL}},
           {"shenzhen": {"IN": {"max_drop": 0.0}} | {a: {"max_drop": 10.0} for a in claims.MEDICAL}},
           {"shenzhen": {a: {"max_drop": 2.0} for a in ARMS}}),
    "e2": ("D4", {"messidor": {"IN": {"max_drop": 30.0}} | {a: {"max_drop": 1.0} for a in claims.MEDICAL}},
           {"messidor": {"IN": {"max_drop": 1.0}} | {a: {"max_drop": 30.0} for a in claims.MEDICAL}},
           {"messidor": {a: {"max_drop": 5.0} for a in ARMS}}),
    "e1": ("D5", {"deepdrid": {"IN": {"train_late_gain": 36.0}} | {a: {"train_late_gain": 0.0} for a in claims.MEDICAL}},
           {"deepdrid": {"IN": {"train_late_gain": 0.0}} | {a: {"train_late_gain": 0.0} for a in claims.MEDICAL}},
           {"deepdrid": {a: {"train_late_gain": 10.0} for a in ARMS}}),
}


@pytest.mark.parametrize("claim", sorted(CURVES))
def test_every_curve_claim_reaches_each_outcome(claim):
    dataset, *designs = CURVES[claim]
    key = "val_curves" if claim == "d1" else "measures"
    for design, expected in zip(designs, ("supported", "contradicted", "inconclusive")):
        assert verdict(judged(**{key: design}), claim, dataset) == expected, expected
    one_seed = judged(**{key: designs[0]}, n_seeds=1)[claim, dataset]
    assert one_seed["verdict"] == "not tested" and one_seed["this_run"] == "agrees"
    assert one_seed["evidence"].startswith(claims.ONE_NETWORK + "; this run: ")
    unknown = judged(**{key: designs[0]}, sizes=False)[claim, dataset]
    assert unknown["verdict"] == "not tested" and "split's size is unknown" in unknown["evidence"]


def test_curve_margins_scale_with_the_validation_split_and_the_seeds():
    design = {"shenzhen": {"IN": {"max_drop": 6.0}} | {a: {"max_drop": 0.0} for a in claims.MEDICAL}}
    convergence, curves, sizes = curve_inputs(design)
    run = {"shenzhen": set(ARMS)}

    def d2(val_images, sd):
        conv = convergence.assign(max_drop_sd=sd)
        found = claims.verdicts(pd.DataFrame(columns=["method"]), conv, run, 0.05, curves=curves,
                                sizes={"shenzhen": {"train": 1000, "val": val_images, "test": 100}})
        return found.set_index(["claim", "dataset"]).at[("d2", "D1"), "verdict"]
    assert d2(20_000, 0.0) == "supported"      # binomial se 0.35 pp: a 6-point drop stands out
    assert d2(100, 0.0) == "inconclusive"      # 100 images: se 5 pp per value, 6 points is noise
    assert d2(20_000, 4.0) == "inconclusive"   # seeds disagreeing by 4 points
    # "earlier" needs the other arm's band to be unable to reach the common threshold
    curves_design = {"shenzhen": {"IN": [0.80, 0.84, 0.86, 0.89] + [0.91] * 6} | {a: SMOOTH for a in claims.MEDICAL}}
    assert verdict(judged(val_curves=curves_design), "d1", "D1") == "supported"
    assert verdict(judged(val_curves=curves_design, curve_sd=3.0), "d1", "D1") == "inconclusive"


def test_curve_claims_need_enough_epochs():
    """Two epochs say nothing about convergence: the curve claims are not tested, whatever the numbers."""
    design = {"shenzhen": {"IN": {"max_drop": 10.0}} | {a: {"max_drop": 0.0} for a in claims.MEDICAL}}
    convergence, curves, sizes = curve_inputs(design, epochs=2)
    found = claims.verdicts(pd.DataFrame(columns=["method"]), convergence, {"shenzhen": set(ARMS)}, 0.05,
                            curves=curves, sizes=sizes).set_index(["claim", "dataset"])
    assert found.at[("d2", "D1"), "verdict"] == "not tested"
    assert "curves of 2 epoch(s): too short" in found.at[("d2", "D1"), "evidence"]


def test_arms_not_run_say_why_in_a_few_words():
    found = judged({"shenzhen": {"Domain_RI": 80.0, "All_RI": 85.0}})
    row = found["b", "D1"]
    assert row["verdict"] == "not tested"
    assert row["evidence"] == "not run: IN, Domain_IN (no ImageNet weights: see What was run)"


# --------------------------------------------------------------------------- simulated studies: size and power

SIM_TEST_IMAGES, SIM_SEEDS = 400, 3


def simulated_study(rng, shift, seed_sd=0.12):
    """Two arms on one binary target, 3 seeds each: a network answers image i right when its skill plus the
    image's ease plus its own noise is > 0; skill = 1.2 + the arm's shift + the seed's draw (sd 0.12: about
    2.5 points of accuracy per network, more than the test noise). Returns (the verdict of claim (c) on D1,
    "Domain_RI beats Domain_IN", its paired row, the two-sided p of a naive seeds-then-patients bootstrap)."""
    ease = rng.normal(size=SIM_TEST_IMAGES)
    truth = rng.integers(0, 2, SIM_TEST_IMAGES)
    columns, probs = [], []
    for arm, arm_shift in (("Domain_IN", 0.0), ("Domain_RI", shift)):
        for s in range(SIM_SEEDS):
            skill = 1.2 + arm_shift + rng.normal(0, seed_sd)
            pred = np.where(skill + ease + rng.normal(0, 0.5, SIM_TEST_IMAGES) > 0, truth, 1 - truth)
            probs.append(np.eye(2)[pred] * 0.9 + 0.05)
            columns.append((arm, s))
    bootstrap_seed = int(rng.integers(1 << 30))
    _, rows = tables.compare_networks(columns, probs, truth, np.arange(SIM_TEST_IMAGES), "accuracy", 500, 0.95,
                                      bootstrap_seed)
    paired = pd.DataFrame(rows).assign(target="shenzhen", train_fraction=1.0, checkpoint="last")
    paired[["difference", "ci_low", "ci_high", "se", "difference_sd", "test_se"]] *= 100
    found = claims.verdicts(tables.add_holm(paired), pd.DataFrame(columns=["target", "arm"]),
                            {"shenzhen": {"Domain_RI", "Domain_IN"}}, 0.05)
    # the naive two-level bootstrap: resample the 3 seeds, then patients, percentile p
    distribution = stats.resampled_metrics("multiclass", ("accuracy",), probs, truth, SIM_TEST_IMAGES, 500,
                                           bootstrap_seed)[:, :, 0]
    drawn = np.random.default_rng(bootstrap_seed).integers(0, SIM_SEEDS, (500, SIM_SEEDS))
    naive = np.take_along_axis(distribution[:, SIM_SEEDS:] - distribution[:, :SIM_SEEDS], drawn, axis=1).mean(axis=1)
    return found.set_index(["claim", "dataset"]).at[("c", "D1"), "verdict"], paired.iloc[0], \
        stats.bootstrap_p_value(naive)


@pytest.mark.slow  # 300 simulated studies
def test_false_supported_rate_and_power_over_simulated_studies():
    rng = np.random.default_rng(2024)
    null = [simulated_study(rng, 0.0) for _ in range(100)]
    rate = np.mean([v == "supported" for v, _, _ in null])
    seed_sd = np.mean([row["difference_sd"] for _, row, _ in null])
    test_se = np.mean([row["test_se"] for _, row, _ in null])
    effect = [simulated_study(rng, 0.7) for _ in range(100)]
    power = np.mean([v == "supported" for v, _, _ in effect])
    size = np.mean([row["difference"] for _, row, _ in effect])
    noisier = [simulated_study(rng, 0.0, seed_sd=0.3) for _ in range(100)]  # training noise 8x the test noise
    noisier_rate = np.mean([v == "supported" for v, _, _ in noisier])
    naive_rate = np.mean([p < 0.05 for _, _, p in noisier])
    print(f"\n100 simulated studies of 3 seeds, two arms equal in expectation: 'supported' in {100 * rate:.0f} % "
          f"(seed sd of a per-seed difference {seed_sd:.1f} pp > test se {test_se:.1f} pp); a real difference of "
          f"{size:.1f} pp (skill +0.7): 'supported' in {100 * power:.0f} % (power). With seed noise 2.5x larger: "
          f"'supported' in {100 * noisier_rate:.0f} %, where a naive seeds-then-patients bootstrap would call the "
          f"arms different in {100 * naive_rate:.0f} %.")
    assert seed_sd > test_se  # the regime the issue asks for: training noise above test noise
    assert rate <= 0.05 and noisier_rate <= 0.05 and power >= 0.80
    assert naive_rate > 0.05  # why the kit does not bootstrap 3 seeds: too few to resample
    assert {v for v, _, _ in null} <= {"supported", "inconclusive", "contradicted"}


# --------------------------------------------------------------------------- a whole study, end to end

# Per target and arm: (validation curve, training curve, share of test images right). Made so that:
# shenzhen: All_IN clearly best, IN clearly worst, the other three identical; medical arms converge earlier
#   and more smoothly than IN -> (a), (b), (g), (d1), (d2) supported, (c) inconclusive (Domain_RI = Domain_IN);
# messidor: every arm predicts the same; IN dips, IN's training curve levelled off -> (e2), (k) supported,
#   (e1) contradicted; deepdrid: IN best, IN's training curve still rising -> (f) contradicted, (e1) supported.
DESIGN = {
    "shenzhen": {"IN": (UNSTEADY, FLAT_TRAIN, 0.55), "Domain_RI": (PEAKED, FLAT_TRAIN, 0.75),
                 "Domain_IN": (SMOOTH, FLAT_TRAIN, 0.75), "All_RI": (SMOOTH, FLAT_TRAIN, 0.75),
                 "All_IN": (SMOOTH, FLAT_TRAIN, 0.97)},
    "messidor": {"IN": (DITCHES, LEVEL_TRAIN, 0.6), **{a: (SMOOTH, FLAT_TRAIN, 0.6) for a in ARMS[1:]}},
    "deepdrid": {"IN": (SMOOTH, RISING_TRAIN, 0.95), **{a: (SMOOTH, FLAT_TRAIN, 0.35) for a in ARMS[1:]}},
}
N_TEST = {"shenzhen": (200, 1), "messidor": (120, 1), "deepdrid": (200, 2)}  # images, images per patient
STUDY_SEEDS = (0, 1, 2)


def plot(out, *extra):
    args = plot_results.get_args_parser().parse_args(["--runs", str(out), "--out", str(out), "--bootstrap", "1000",
                                                      *extra])
    plot_results.main(args)


def write_design(out, seeds):
    for target, arms in DESIGN.items():
        n, per_patient = N_TEST[target]
        for arm, (val, train, right) in arms.items():
            for seed in seeds:  # a seed moves the share right by half a point: the seeds' spread is real, small
                write_claim_run(out, target, arm, val, train, right + 0.005 * (seed - 1), seed, n, per_patient)
        write_split_sizes(out, target, train=50_000, val=20_000, test=n)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    write_design(out, STUDY_SEEDS)
    write_study_json(out, seeds=list(STUDY_SEEDS), targets=list(DESIGN))
    plot(out)
    return out


@pytest.fixture(scope="module")
def one_seed_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_seed")
    write_design(out, (0,))
    write_study_json(out, targets=list(DESIGN))
    plot(out)
    return out


def verdict_of(out, claim, dataset):
    table = pd.read_csv(out / "tables" / "claims.csv", keep_default_na=False)
    return table.loc[(table["claim"] == claim) & (table["dataset"] == dataset), "verdict"].item()


def test_verdicts_of_the_fabricated_study(fabricated):
    expected = {("a", "D1"): "supported", ("b", "D1"): "supported", ("g", "D1"): "supported",
                ("c", "D1"): "inconclusive", ("f", "D5"): "contradicted", ("d1", "D1"): "supported",
                ("d2", "D1"): "supported", ("e2", "D4"): "supported", ("e1", "D5"): "supported",
                ("e1", "D4"): "contradicted", ("k", "D4"): "supported", ("h", "D1-D5"): "not tested"}
    assert {key: verdict_of(fabricated, *key) for key in expected} == expected
    table = pd.read_csv(fabricated / "tables" / "claims.csv", keep_default_na=False)
    assert (table.loc[table["dataset"].isin(["D2", "D3"]), "verdict"] == "not tested").all()  # targets not run
    assert set(table["replication"]) <= {"3 seeds", ""} and not table["this_run"].any()
    row = table[(table["claim"] == "c") & (table["dataset"] == "D1")].iloc[0]
    assert "Domain_RI − Domain_IN +0.0 pp [0.0, 0.0], p_Holm 1.000" in row["evidence"]
    assert row["paper_table"] == "disagrees (Domain_RI 90.0, Domain_IN 91.7)"
    d1 = table[(table["claim"] == "d1") & (table["dataset"] == "D1")].iloc[0]["evidence"]
    threshold = stats.share_of(91.0, 0.95)  # 95 % of Domain_RI's last value, 91 %
    assert d1.startswith(f"epochs to {threshold:.1f} % (95 % of Domain_RI's last value)") and "IN 10 [" in d1


def test_one_seed_supports_nothing_and_says_so_in_every_line(one_seed_study):
    table = pd.read_csv(one_seed_study / "tables" / "claims.csv", keep_default_na=False)
    assert "supported" not in set(table["verdict"])
    tested = table[table["this_run"] != ""]
    assert len(tested) >= 8 and (tested["verdict"] == "not tested").all()
    assert tested["evidence"].str.startswith(claims.ONE_NETWORK).sum() == (tested["target"] != "all").sum()
    report = (one_seed_study / "report.md").read_text()
    answers = [line for line in report.splitlines() if line.startswith("- D")]
    assert answers and all(claims.ONE_NETWORK in line for line in answers)
    assert not any("beats ImageNet here" in line for line in answers)
    assert "this run: All_IN > IN, Domain_RI > IN, Domain_IN > IN, All_RI > IN on the test set" in answers[0]
    verdict_rows = [line for line in report.splitlines() if line.startswith("| (")]
    assert all(claims.ONE_NETWORK in line for line in verdict_rows if "not tested" in line and "| — |" not in line)


def test_report_content(fabricated):
    report = (fabricated / "report.md").read_text()
    top = report[:report.index("## The paper's claims")]
    assert "**Data: synthetic demo data**" in top and "mean nothing about medicine" in top
    assert "Seeds: 0, 1, 2: the training run is the unit of replication" in top and "Not run" not in top
    assert "Targets not run: D2 COVID-19 Radiography, D3 Kather Texture 2016 (the targets setting)" in top
    assert "Known limits of the data: targets without patient ids" in top
    answers = [line for line in top.splitlines() if line.startswith("- D")]
    assert len(answers) == 3
    assert "medical pretraining beats ImageNet here" in answers[0]
    assert "best medical arm All_IN" in answers[0] and "shown better than the next, Domain_RI" in answers[0]
    assert "no medical arm is shown better or worse than ImageNet" in answers[1]
    assert "no best arm: Domain_RI is not shown better than Domain_IN, p_Holm 1.000" in answers[1]  # an exact tie
    assert "ImageNet beats medical pretraining here" in answers[2]
    for part in ("## The paper's claims, checked", "**supported**", "**contradicted**", "**inconclusive**",
                 "## The paper's Table 2 next to this run", "| Paper val (%) |", "Ranking of the arms",
                 "all pairs of arms", "| p Holm (of m) |", "over the m comparisons actually run",
                 "Holm corrects for the comparisons of each target actually run (D1 10, D4 10, D5 10)",
                 "Largest val drop (pp)", "Train gain, last third (pp)", "Val epochs to threshold",
                 "## Settings: the paper's and the kit's", "**optimizer and learning rate** — paper: not stated; this study trained with AdamW: lr 0.0001, "
                 "weight_decay 0.0001 (fine-tuning)",
                 "binary cross-entropy over the 22 labels (the kit's inference)", "(figures/shenzhen_loss.png)",
                 "(figures/forest.png)", "n = 200 images, 100 patients", "(Section 7)"):
        assert part in report, part
    assert "Val AUC" not in report
    stability = [line for line in report.splitlines() if line.startswith("| D1 Shenzhen CXR | IN | 88.0")][0]
    assert "| 10 ± 0.0 |" in stability  # epochs as counts, not "10.0"


def test_every_table_fits_a_markdown_viewer(fabricated, one_seed_study):
    for out in (fabricated, one_seed_study):
        for path in (out / "report.md", out / "tables" / "table2.md"):
            rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
            assert rows and max(len(line) for line in rows) <= TABLE_WIDTH, max(rows, key=len)


def test_figures_are_all_linked(fabricated):
    report = (fabricated / "report.md").read_text()
    written = sorted(p.name for p in (fabricated / "figures").glob("*.png"))
    assert len(written) == 8 and all(f"(figures/{name})" in report for name in written)


def test_the_missing_reason_appears_once(tmp_path):
    for arm in ("Domain_RI", "All_RI"):
        for seed in (0, 1):
            write_claim_run(tmp_path, "shenzhen", arm, SMOOTH, FLAT_TRAIN, 0.75 if arm == "Domain_RI" else 0.97,
                            seed)
    reason = "download failed: " + "a long error message from the network stack " * 10
    write_study_json(tmp_path, imagenet_found=False, imagenet_weights=None, imagenet_missing_reason=reason,
                     seeds=[0, 1])
    plot(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "claims.csv")
    shenzhen = table[table["dataset"] == "D1"]
    assert (shenzhen["verdict"] == "not tested").all() and "supported" not in set(table["verdict"])
    assert shenzhen["evidence"].str.contains("no ImageNet weights: see What was run", regex=False).all()
    report = (tmp_path / "report.md").read_text()
    assert report.count(reason.strip()) == 1
    assert "**Not run: IN, Domain_IN, All_IN**: no ImageNet weights (download failed" in report
    assert "the ImageNet arm was not run (no ImageNet weights: see What was run)" in report

    # pretrained once: the report says the seeds' spread leaves the pretraining out
    write_study_json(tmp_path, seeds=[0, 1], pretrain_seed=0)
    plot(tmp_path)
    assert "Pretrained once (PRETRAIN_SEED=0)" in (tmp_path / "report.md").read_text()
    # without study.json (a folder the workflow did not write) the report still comes, and says what it cannot know
    (tmp_path / "study.json").unlink()
    plot(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "**Data: unknown**" in report and "**Not run: IN, Domain_IN, All_IN**." in report


def test_too_few_test_patients_in_the_report(tmp_path):
    for arm, right in (("IN", 0.5), ("Domain_RI", 0.75)):
        for seed in (0, 1):
            write_claim_run(tmp_path, "shenzhen", arm, SMOOTH, FLAT_TRAIN, right, seed, n_test=12)
    write_study_json(tmp_path, seeds=[0, 1])
    plot(tmp_path)
    paired = pd.read_csv(tmp_path / "tables" / "paired.csv")
    assert paired["min_class_patients"].max() < stats.MIN_PATIENTS_PER_CLASS and paired["p_value"].isna().all()
    report = (tmp_path / "report.md").read_text()
    answer = [line for line in report.splitlines() if line.startswith("- D1")][0]
    assert "too few test patients for an interval (fewest per class" in answer
    assert "[" not in answer.split("IN ", 1)[1].split(";")[0]  # the estimate, no interval
    table2 = (tmp_path / "tables" / "table2.md").read_text()
    assert " ‡ |" in table2 and "‡ too few test patients for an interval: fewer than 10 test patients" in table2
    rows = [line for line in report.splitlines() + table2.splitlines() if line.startswith("|")]
    assert max(len(line) for line in rows) <= TABLE_WIDTH


# --------------------------------------------------------------------------- arms beyond the paper

def test_arms_beyond_the_paper_enter_the_answer_and_get_claims_of_their_own():
    values = {"shenzhen": {"IN": 80.0, "Domain_RI": 80.5, "Domain_IN": 80.2, "All_RI": 80.1, "All_IN": 80.3,
                           "CheXNet": 90.0, "All_RI_bal": 70.0}}
    paired, arms_run = claim_inputs(values)
    assert {"CheXNet", "All_RI_bal"} <= set(paired["arm"]) | set(paired["reference"])  # all pairs, with Holm
    found = claims.verdicts(paired, pd.DataFrame(columns=["target", "arm"]), arms_run, alpha=0.05)
    beyond = found[found["claim"].str.startswith("x")].set_index("title")
    assert list(beyond.index) == ["All_RI_bal beats IN (beyond the paper)", "CheXNet beats IN (beyond the paper)"]
    assert beyond.loc["CheXNet beats IN (beyond the paper)", "verdict"] == "supported"
    assert beyond.loc["All_RI_bal beats IN (beyond the paper)", "verdict"] == "contradicted"
    assert set(beyond["paper_table"]) == {"not in the paper"}
    summary = {arm: (value, value - 1, value + 1) for arm, value in values["shenzhen"].items()}
    sentence = claims.answer("shenzhen", paired, summary, arms_run["shenzhen"], 0.05, "accuracy")
    assert "best medical arm CheXNet 90.0" in sentence and "All_RI_bal shown worse than IN" in sentence
    # the paper's own claims are untouched by the extra arms
    plain = claims.verdicts(*claim_inputs({"shenzhen": {a: values["shenzhen"][a] for a in ARMS}})[:1],
                            pd.DataFrame(columns=["target", "arm"]), {"shenzhen": set(ARMS)}, alpha=0.05)
    assert plain.drop(columns="evidence").equals(found[~found["claim"].str.startswith("x")].reset_index(drop=True)
                                                 .drop(columns="evidence"))
