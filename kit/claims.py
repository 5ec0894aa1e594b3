"""The paper's claims (Sections 5.3 and 7) as rules, checked on this run: one verdict per claim and target.

A claim is about pretraining arms ("these arms beat those"), so its evidence must hold across
training runs, not only for the networks at hand: the training run is the unit of replication.
Each claim's verdict on a target is one of

    supported     this run shows the claimed direction (the rules below), with two or more seeds,
    contradicted  this run shows the opposite for a part the claim needs,
    inconclusive  neither,
    not tested    an arm or the target the claim needs was not run (e.g. no ImageNet weights), there
                  are no results to compare, too few test patients, curves too short, or one seed:
                  with one network per arm the training noise is not measured, and the row then
                  says what this run shows ("this run: All_IN > IN on the test set") instead.

What "shows" means (alpha = 1 - ci, 0.05):

* performance claims (a, b, c, f, g, h, i): the paired comparison of two arms on the target's test
  split (tables/paired.csv at the claims checkpoint, by default the last epoch as in the paper's
  Table 2). Its p-value carries both noises (kit/stats.py two_level: the seeds' spread and a patient
  bootstrap), and Holm's correction over the target's comparisons keeps the chance of any false
  "shown" on a target at most alpha. X is shown better than Y when X - Y > 0 with Holm p < alpha.
* non-inferiority (j) and equivalence (k), with a margin of MARGIN points of accuracy (for a kappa the
  same number of changed decisions: MARGIN / (1 - chance agreement of Table 1's classes), 2.9 points
  on D4): X is shown non-inferior to Y when the one-sided test rejects X - Y <= -margin, equivalent
  when both one-sided tests reject |X - Y| >= margin (at alpha each: "supported" needs every pair, so
  its error stays at alpha); shown inferior (or different) by more than the margin at alpha / m over
  the claim's m pairs (Bonferroni).
* curve claims (d1, d2, e1, e2), on the validation (training for e1) curves: the noise of a value
  measured on n images is at most the binomial 50 / sqrt(n) points (twice that for a kappa,
  stats.value_se); the seeds add their spread. "Earlier" (d1) is measured against a threshold common
  to every arm: 95 % of the best arm's last value. On the seed-mean curve each arm gets the epochs at
  which its noise band (value ± t * sqrt(se^2 + sd^2 / S)) first touches and first clears the
  threshold; X is shown earlier than Y when X clears it before Y can touch it. The largest drop (d2,
  e2) and the training gain over the last third (e1) are compared with stats.t_test (seeds' variance
  + 4 se^2: two values per arm). Each at alpha / m over the claim's m pairs on that target.
  Curves shorter than MIN_CURVE_EPOCHS epochs, or a validation split of unknown size, leave them
  "not tested".

How the pairs combine, with B the arms claimed better and W those claimed worse:

    kind "all", "noninferior", "equivalent"   supported when every pair shows the claimed relation;
                 contradicted when some pair shows the opposite;
    kind "some"  (an arm of B is the best)    supported when some X in B is shown better than every
                 Y in W; contradicted when every X in B has some Y in W shown better than it;
    otherwise inconclusive. e1 also needs IN's training curve shown still rising (its last-third gain
    > 0) for "supported", and IN's gain shown below LEVELLED_OFF points contradicts it.

Claims over several targets ("almost every dataset": across = 4 of 5; "all datasets": 5 of 5; "4 of 5
datasets") test each target at alpha / 5 (Bonferroni over the five), so the count keeps a false
"supported" at most alpha: supported when at least `across` targets are, contradicted when more than
5 - across are contradicted, not tested when fewer than `across` targets could be tested.

The paper's own Table 2 is put through the same rules with no noise (the sign of a difference of its
validation values; equal values show nothing), so each row also says whether the paper's numbers
agree with its text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from . import stats
from .paper import ARMS, TABLE1, TABLE2, TARGETS, chance_agreement, short_name

VERDICTS = ("supported", "contradicted", "inconclusive", "not tested")
MEDICAL = ("Domain_RI", "Domain_IN", "All_RI", "All_IN")
OTHERS = ("IN", "Domain_RI", "Domain_IN")
D1_D3 = ("shenzhen", "covid19_radiography", "kather2016")
D1_D5 = tuple(TARGETS)
# Non-inferiority and equivalence margin in points of accuracy (the paper states none; the kit's
# choice): one test image in fifty, smaller than any gap a reader would choose a pretraining by, and
# a size the test splits of D2 and D3 (hundreds to thousands of images) can resolve.
MARGIN = 2.0
LEVELLED_OFF = 2.0    # points: a training curve shown to gain less than this over its last third has levelled off
MIN_CURVE_EPOCHS = 5  # curve claims on fewer epochs are not tested: too short to tell how a curve converges
ONE_NETWORK = "one network per arm: training noise not measured"
SEE_TOP = "see What was run"
# The paper's Table 2 put through a claim's rule: does it bear out the paper's text?
TABLE_WORDS = {"supported": "agrees", "contradicted": "disagrees", "inconclusive": "ties or mixed"}
COLUMNS = ["claim", "target", "dataset", "title", "quote", "better", "worse", "paper_table", "evidence", "this_run",
           "replication", "verdict"]


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    quote: str                          # the paper's words
    scope: dict                         # target -> (arms claimed better, arms claimed worse)
    kind: str = "all"                   # "all" | "some" | "noninferior" | "equivalent" (module docstring)
    measure: str = "test"               # "test" (paired comparisons) or a curve measure
    label: str = ""                     # how the evidence names the measure
    still_rising: str | None = None     # e1: this arm's training curve must still be rising
    across: int | None = None           # the claim holds on at least this many of its targets
    section: str = "5.3"


def _same(arms_better, arms_worse, targets):
    return {t: (tuple(arms_better), tuple(arms_worse)) for t in targets}


CLAIMS = [
    Claim("a", "The generalized All_* models perform best on D1-D3",
          "All three datasets have shown high-performance gain with generalized medical transfer models (All_XX) "
          "compared to others.", _same(("All_RI", "All_IN"), OTHERS, D1_D3), kind="some"),
    Claim("b", "Domain-specific models beat ImageNet (IN) on D1-D3",
          "both Domain_RI and Domain_IN have performed better than IN", _same(("Domain_RI", "Domain_IN"), ("IN",), D1_D3)),
    Claim("c", "RI vs IN initialisation of the domain models: Domain_RI > Domain_IN on D1, D2; the opposite on D3",
          "Domain_RI showed higher accuracy than Domain_IN for a) and b) datasets, while for c) it is the opposite.",
          {"shenzhen": (("Domain_RI",), ("Domain_IN",)), "covid19_radiography": (("Domain_RI",), ("Domain_IN",)),
           "kather2016": (("Domain_IN",), ("Domain_RI",))}),
    Claim("d1", "Medical models converge earlier than IN (D1-D3)",
          "Their learning curves also showed an early and stabilized flow towards convergence. However, the natural "
          "trained model (IN) showed the least performance and an unstable convergence curve.",
          _same(MEDICAL, ("IN",), D1_D3), measure="epochs_to_threshold", label="reaches the threshold before"),
    Claim("d2", "Medical models converge more stably than IN (D1-D3)",
          "an early and stabilized flow towards convergence [...] IN [...] an unstable convergence curve",
          _same(MEDICAL, ("IN",), D1_D3), measure="max_drop", label="largest val drop (pp)"),
    Claim("e1", "On D4/D5 the IN model does not converge in the fixed number of epochs (training curve)",
          "Both the datasets have shown similar performance behavior to a), b), and c) for training sets, though "
          "the IN model does not converge in the fixed number of epochs.",
          _same(MEDICAL, ("IN",), ("messidor", "deepdrid")), measure="train_late_gain",
          label="training gain over the last third (pp)", still_rising="IN"),
    Claim("e2", "On D4 the IN model shows sharp dips (\"ditches\") in validation",
          "Despite the nearly equal performance, sharp ditches have been shown by the IN model for the d) dataset.",
          _same(MEDICAL, ("IN",), ("messidor",)), measure="max_drop", label="largest val drop (pp)"),
    Claim("f", "On D5, All_IN and the EFI models beat IN and All_RI",
          "for the e) dataset, All_IN and domain-specific models (EFI_IN and EFI_RI) have shown better metric values "
          "than the other two.", _same(("All_IN", "Domain_RI", "Domain_IN"), ("IN", "All_RI"), ("deepdrid",))),
    Claim("g", "IN shows the least performance on D1-D3",
          "However, the natural trained model (IN) showed the least performance and an unstable convergence curve.",
          _same(MEDICAL, ("IN",), D1_D3)),
    Claim("h", "The All_* models are best for almost every dataset (at least 4 of D1-D5)",
          "generalized medical models (All_RI and All_IN) have shown the best results for almost every dataset",
          _same(("All_RI", "All_IN"), OTHERS, D1_D5), kind="some", across=4),
    Claim("i", "The All_* models are even better on all datasets (D1-D5)",
          "Our exploration of unified/generalized medical transfer models showed even better results for all "
          "datasets.", _same(("All_RI", "All_IN"), OTHERS, D1_D5), kind="some", across=5, section="7"),
    Claim("j", "Domain_RI is competing (non-inferior to every other arm) on 4 of 5 datasets",
          "4 out of 5 datasets have shown competing results by randomly initialized domain-specific models "
          "(Domain_RI).", _same(("Domain_RI",), ("IN", "Domain_IN", "All_RI", "All_IN"), D1_D5), kind="noninferior",
          across=4),
    Claim("k", "On D4 the arms perform nearly equally (every pair equivalent)",
          "Despite the nearly equal performance, sharp ditches have been shown by the IN model for the d) dataset.",
          {"messidor": (tuple(ARMS), ())}, kind="equivalent"),
]


def beyond_paper(arms):
    """The arms of a study that are not the paper's (published backbones, balanced All models): medical
    initialisations the answer and the claims compare against ImageNet too."""
    return sorted(set(arms) - set(ARMS) - {"RI"})


def beyond_claims(arms_run):
    """Claims beyond the paper, one per arm that is not the paper's: it beats ImageNet initialisation (IN), on
    every target that ran it. Judged by the same rules as the paper's claims; none without such arms."""
    return [Claim(f"x{i}", f"{arm} beats IN (beyond the paper)", f"not a claim of the paper: does {arm} beat "
                  "ImageNet initialisation on this target?", {t: ((arm,), ("IN",)) for t in arms_run
                                                              if arm in arms_run[t]}, section="beyond the paper")
            for i, arm in enumerate(beyond_paper({a for arms in arms_run.values() for a in arms}), 1)]


def pairs_of(claim, target):
    """The (x, y) pairs a claim needs on a target, x claimed better (equivalence: every pair of arms)."""
    better, worse = claim.scope[target]
    if claim.kind == "equivalent":
        return list(combinations(better, 2))
    return [(x, y) for x in better for y in worse]


def margin(target, metric):
    """The non-inferiority and equivalence margin in points: MARGIN for an accuracy; for a kappa of a
    target in Table 1 the same number of changed decisions, MARGIN / (1 - chance agreement)."""
    if metric in ("kappa", "qwk") and target in TABLE1:
        return round(MARGIN / (1 - chance_agreement(target)), 1)
    return MARGIN


# --------------------------------------------------------------------------- combining pairs

def combine(kind, directions):
    """Verdict from {(x, y): direction} over every pair the claim needs (x claimed better; +1 shown the
    claimed way, -1 shown the other way, 0 neither)."""
    if kind != "some":
        if all(d == 1 for d in directions.values()):
            return "supported"
        if any(d == -1 for d in directions.values()):
            return "contradicted"
        return "inconclusive"
    better = list(dict.fromkeys(x for x, _ in directions))
    worse = list(dict.fromkeys(y for _, y in directions))
    if any(all(directions[x, y] == 1 for y in worse) for x in better):
        return "supported"
    if all(any(directions[x, y] == -1 for y in worse) for x in better):
        return "contradicted"
    return "inconclusive"


def combine_across(claim, verdicts):
    """The verdict of a claim over several targets from the targets' verdicts (module docstring)."""
    n = len(verdicts)
    count = {v: sum(x == v for x in verdicts) for v in VERDICTS}
    if count["contradicted"] > n - claim.across:
        return "contradicted"
    if count["supported"] >= claim.across:
        return "supported"
    if n - count["not tested"] < claim.across:
        return "not tested"
    return "inconclusive"


# --------------------------------------------------------------------------- performance pairs

def pair_lookup(paired: pd.DataFrame) -> dict:
    """{(target, arm, reference): row} of the headline comparisons in `paired` (one checkpoint and
    train fraction; DeLong rows left out)."""
    rows = paired[paired["method"] != "DeLong"]
    return {(r.target, r.arm, r.reference): r for r in rows.itertuples()}


def find_pair(pairs, target, x, y):
    """(row, sign): the comparison of x and y, sign +1 when the row is x - y and -1 when it is y - x;
    (None, 0) when the two were not compared."""
    row = pairs.get((target, x, y))
    if row is not None:
        return row, 1
    row = pairs.get((target, y, x))
    return (row, -1) if row is not None else (None, 0)


def _value(row, column):
    value = getattr(row, column, math.nan)
    return math.nan if value is None or pd.isna(value) else float(value)


def fmt_p(p):
    """A p-value as the report prints it: '< 0.001', '0.012' or 'n/a'."""
    return "n/a" if p is None or pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def performance_direction(kind, row, sign, level, m, delta):
    """+1 / -1 / 0 for one pair (module docstring) and its evidence text."""
    d = sign * _value(row, "difference") + 0.0  # + 0.0: a negated 0 would print as "-0.0"
    low, high = sorted((sign * _value(row, "ci_low") + 0.0, sign * _value(row, "ci_high") + 0.0))
    se, df = _value(row, "se"), _value(row, "df")
    df = math.inf if math.isnan(df) else df
    text = f"{row.arm if sign == 1 else row.reference} − {row.reference if sign == 1 else row.arm} {d:+.1f} pp " \
           f"[{low:.1f}, {high:.1f}]"
    if kind in ("all", "some"):
        p = _value(row, "p_holm")
        shown = not math.isnan(p) and p < level and d != 0
        return (int(math.copysign(1, d)) if shown else 0), f"{text}, p_Holm {fmt_p(p)}"
    if kind == "noninferior":
        better = stats.one_sided_p(d, -delta, se, df)
        worse = stats.one_sided_p(-d, delta, se, df)
        direction = 1 if better < level else -1 if worse < level / m else 0
        return direction, f"{text} (margin −{delta:.1f}), p {fmt_p(better)}"
    inside = max(stats.one_sided_p(d, -delta, se, df), stats.one_sided_p(-d, -delta, se, df))
    beyond = 2 * min(stats.one_sided_p(d, delta, se, df), stats.one_sided_p(-d, delta, se, df))
    direction = 1 if inside < level else -1 if beyond < level / m else 0
    return direction, f"{text} (margin ±{delta:.1f}), p {fmt_p(inside)}"


RELATION = {"all": (">", "<"), "some": (">", "<"), "noninferior": ("≥ {y} − δ", "< {y} − δ"),
            "equivalent": ("≈", "≠")}


def relations(claim, directions, where):
    """'this run: All_IN > IN, Domain_RI > IN on the test set' from the pairs shown either way."""
    said = []
    for (x, y), d in directions.items():
        if d == 0:
            continue
        if claim.measure != "test":
            first, second = (x, y) if d == 1 else (y, x)
            said.append(f"{first} {claim.label} {second}")
        elif claim.kind == "noninferior":
            said.append(f"{x} {RELATION['noninferior'][d == -1].format(y=y)}")
        else:
            said.append(f"{x} {RELATION[claim.kind][d == -1]} {y}")
    return f"this run: {', '.join(said) if said else 'no pair decided'} {where}"


# --------------------------------------------------------------------------- curve pairs

def curve_noise(claim, target, metric, sizes):
    """The binomial bound (points) of one value of the claim's curve: on the validation split, or on the
    train split for the training curve (e1); NaN when the split's size is unknown."""
    split = "train" if claim.measure.startswith("train") else "val"
    n = (sizes or {}).get(target, {}) or {}
    return 100 * stats.value_se(metric, n.get(split)), split, n.get(split)


def welch(parts):
    """(variance, degrees of freedom) of a sum of independent variance estimates [(variance, df)]."""
    variance = sum(v for v, _ in parts)
    denominator = sum(v ** 2 / df for v, df in parts if v > 0 and df > 0)
    return variance, (variance ** 2 / denominator if denominator > 0 else math.inf)


def seed_part(row, column):
    """(variance of the seed-mean, df) of a curve measure from its sd across seeds; (0, inf) for one seed."""
    sd, n = _value(row, f"{column}_sd"), int(row.n_seeds)
    return (sd ** 2 / n, n - 1) if n > 1 and not math.isnan(sd) else (0.0, math.inf)


def measure_direction(cx, cy, column, se, level):
    """x claimed better (lower measure) than y: +1 / -1 / 0 at `level`, t test with both noises."""
    x, y = _value(cx, column), _value(cy, column)
    if math.isnan(x) or math.isnan(y):
        return None
    variance, df = welch([seed_part(cx, column), seed_part(cy, column)])
    found = stats.t_test(x - y, variance, df if math.isfinite(df) else 1.0, 4 * se ** 2)
    if not found["p_value"] < level or x == y:
        return 0
    return 1 if x < y else -1


def reach_band(curve, n_seeds, se, threshold, level):
    """(earliest, middle, latest) epoch at which a seed-mean validation curve (%) can have reached the
    threshold: its band value ± t * sqrt(se^2 + sd^2 / S) first touching it, the curve itself, the band
    first clearing it (inf: never)."""
    val = curve[curve["split"] == "val"].sort_values("epoch")
    epochs = val["epoch"].to_numpy(dtype=float)
    mean = 100 * val["value"].to_numpy(dtype=float)
    sd = 100 * val["value_sd"].to_numpy(dtype=float) if "value_sd" in val else np.full(len(val), math.nan)
    seed_var = np.where(np.isfinite(sd) & (n_seeds > 1), sd ** 2 / max(n_seeds, 1), 0.0)
    total = seed_var + se ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(seed_var > 0, total ** 2 / (seed_var ** 2 / max(n_seeds - 1, 1)), np.inf)
    half = student_t.ppf(1 - level / 2, df) * np.sqrt(total)

    def first(values):
        hit = np.flatnonzero(values >= threshold)
        return float(epochs[hit[0]]) if hit.size else math.inf
    return first(mean + half), first(mean), first(mean - half)


def fmt_epoch(value):
    return "never" if not math.isfinite(value) else f"{value:.0f}"


# --------------------------------------------------------------------------- the paper's own table

def paper_table_verdict(claim, target):
    """The same rule on the paper's Table 2 validation values with no noise (curve claims: None)."""
    if claim.measure != "test" or any(a not in ARMS for pair in pairs_of(claim, target) for a in pair):
        return None
    val = {arm: TABLE2[target][arm][1] for arm in ARMS}
    delta = margin(target, TARGETS[target][3])
    directions = {}
    for x, y in pairs_of(claim, target):
        d = val[x] - val[y]
        if claim.kind == "noninferior":
            d = d + delta
        elif claim.kind == "equivalent":
            d = delta - abs(d)
        directions[x, y] = (d > 1e-9) - (d < -1e-9)
    better, worse = claim.scope[target]
    shown = ", ".join(f"{x} {val[x]:.1f}" for x in dict.fromkeys(better + worse))
    return combine(claim.kind, directions), shown


def paper_curve_note(target):
    """What the paper's Table 2 says about a curve claim: the training values at the last epoch."""
    train = {arm: TABLE2[target][arm][0] for arm in ARMS}
    others = [train[a] for a in MEDICAL]
    figure = "Fig. 3" if target in D1_D3 else "Fig. 4"
    return (f"curves only ({figure}); Table 2 training at the last epoch: IN {train['IN']:.1f}, medical arms "
            f"{min(others):.1f}-{max(others):.1f}")


# --------------------------------------------------------------------------- verdicts

class _NotTested(Exception):
    """A claim that cannot be judged on a target; the message is the row's evidence."""


def judge(claim, target, pairs, curve_rows, curves, sizes, arms_run, alpha, missing_reason, metric):
    """One row of tables/claims.csv: the claim on one target."""
    better, worse = claim.scope[target]
    row = {"claim": claim.key, "target": target, "dataset": short_name(target), "title": claim.title,
           "quote": claim.quote, "better": " ".join(better), "worse": " ".join(worse), "this_run": "",
           "replication": ""}
    table = paper_table_verdict(claim, target)
    row["paper_table"] = (f"{TABLE_WORDS[table[0]]} ({table[1]})" if table else "not in the paper"
                          if claim.section == "beyond the paper" else paper_curve_note(target))
    needed = set(better) | set(worse)
    if target not in arms_run:
        return row | {"verdict": "not tested", "evidence": f"{short_name(target)} not run"}
    absent = [a for a in ARMS if a in needed - arms_run.get(target, set())]
    if absent:
        why = f" ({missing_reason}: {SEE_TOP})" if missing_reason and set(absent) & {"IN", "Domain_IN", "All_IN"} else ""
        return row | {"verdict": "not tested", "evidence": f"not run: {', '.join(absent)}{why}"}
    level = alpha / len(claim.scope) if claim.across else alpha
    try:
        if claim.measure == "test":
            directions, evidence, n_seeds = _on_test_set(claim, target, pairs, level)
            verdict, where = combine(claim.kind, directions), "on the test set"
        else:
            metric = metric or TARGETS.get(target, (None,) * 4)[3]
            directions, evidence, n_seeds, se = _on_curves(claim, target, needed, curve_rows, curves, sizes, metric,
                                                           level)
            verdict, where = combine(claim.kind, directions), "on the curves"
            if claim.still_rising:
                own = curve_rows.get((target, claim.still_rising))
                verdict, evidence = _still_rising(claim, own, verdict, evidence, se, level)
    except _NotTested as why:
        return row | {"verdict": "not tested", "evidence": str(why)}
    if n_seeds < 2:  # one network per arm: what this run shows, never a verdict about the arms
        return row | {"verdict": "not tested", "this_run": TABLE_WORDS.get(verdict, verdict),
                      "replication": ONE_NETWORK,
                      "evidence": f"{ONE_NETWORK}; {relations(claim, directions, where)}; {evidence}"}
    return row | {"verdict": verdict, "evidence": evidence, "replication": f"{n_seeds} seeds"}


def _on_test_set(claim, target, pairs, level):
    """The claim's pairs of arms on the test set (their paired comparisons): ({pair: direction}, evidence,
    fewest seeds); _NotTested without a comparison or enough test patients."""
    pairs_needed = pairs_of(claim, target)
    found = {}
    for x, y in pairs_needed:
        pair, sign = find_pair(pairs, target, x, y)
        if pair is None:
            raise _NotTested(f"{x} vs {y}: not compared")
        found[x, y] = (pair, sign)
    fewest = min(_value(p, "min_class_patients") for p, _ in found.values())
    if fewest < stats.MIN_PATIENTS_PER_CLASS:
        raise _NotTested(f"too few test patients for an interval (fewest per class {fewest:.0f} < "
                         f"{stats.MIN_PATIENTS_PER_CLASS})")
    n_seeds = min(int(p.n_seeds) for p, _ in found.values())
    delta = margin(target, found[pairs_needed[0]][0].metric)
    m = len(pairs_needed)
    judged = {k: performance_direction(claim.kind, p, s, level, m, delta) for k, (p, s) in found.items()}
    return {k: d for k, (d, _) in judged.items()}, "; ".join(text for _, text in judged.values()), n_seeds


def _on_curves(claim, target, needed, curve_rows, curves, sizes, metric, level):
    """The claim's pairs of arms on the learning curves, against the validation split's binomial noise:
    ({pair: direction}, evidence, fewest seeds, the noise's se in pp); _NotTested for curves too short, a
    split of unknown size, or a pair that cannot be told apart."""
    pairs_needed = pairs_of(claim, target)
    m = len(pairs_needed)
    have = {a: curve_rows.get((target, a)) for a in needed}
    epochs = min((int(r.epochs) for r in have.values() if r is not None), default=0)
    if epochs < MIN_CURVE_EPOCHS:
        raise _NotTested(f"curves of {epochs} epoch(s): too short to tell how they converge (needs >= "
                         f"{MIN_CURVE_EPOCHS})")
    se, split, n = curve_noise(claim, target, metric, sizes)
    if math.isnan(se):
        raise _NotTested(f"the {split} split's size is unknown (no manifests/{target}.json): no noise bound for its "
                         f"curves")
    n_seeds = min(int(r.n_seeds) for r in have.values() if r is not None)
    noise = f"noise: {n:,} {split} images (binomial se ≤ {se:.1f} pp per value), {n_seeds} seed(s)"
    if claim.measure == "epochs_to_threshold":
        directions, evidence = earlier(claim, target, have, curves, se, level / m, noise)
    else:
        directions = {(x, y): measure_direction(have[x], have[y], claim.measure, se, level / m)
                      for x, y in pairs_needed}
        evidence = f"{claim.label}: " + ", ".join(
            f"{a} {_value(have[a], claim.measure):.1f}" + (f" ± {_value(have[a], claim.measure + '_sd'):.1f}"
                                                            if n_seeds > 1 else "")
            for a in ARMS if a in needed and have[a] is not None) + f"; {noise}"
    if any(d is None for d in directions.values()):
        raise _NotTested(evidence)
    return directions, evidence, n_seeds, se


def _still_rising(claim, own, verdict, evidence, se, level):
    """e1: the arm's own training curve (`own`) still rising, or levelled off: (verdict, evidence) revised."""
    variance, df = welch([seed_part(own, claim.measure)])
    gain = _value(own, claim.measure)
    se_own = math.sqrt(variance + 2 * se ** 2)
    df = df if math.isfinite(df) else math.inf
    if stats.one_sided_p(-gain, -LEVELLED_OFF, se_own, df) < level:
        return "contradicted", evidence + f"; {claim.still_rising}'s gain shown below {LEVELLED_OFF:g} pp: levelled off"
    if verdict == "supported" and not stats.one_sided_p(gain, 0.0, se_own, df) < level:
        return "inconclusive", evidence + f"; {claim.still_rising}'s gain not shown above 0"
    return verdict, evidence


def earlier(claim, target, have, curves, se, level, noise):
    """d1: directions and evidence of "reaches the common threshold earlier" (reach_band)."""
    threshold_row = next(r for r in have.values() if r is not None)
    threshold, source = _value(threshold_row, "threshold"), getattr(threshold_row, "threshold_arm", None)
    arm_curves = (curves or {}).get(target, {})
    if math.isnan(threshold) or any(a not in arm_curves for a in have):
        return {k: None for k in pairs_of(claim, target)}, "no seed-mean curves to compare"
    bands = {a: reach_band(arm_curves[a], int(have[a].n_seeds), se, threshold, level) for a in have}
    directions = {}
    for x, y in pairs_of(claim, target):
        directions[x, y] = 1 if bands[x][2] < bands[y][0] else -1 if bands[y][2] < bands[x][0] else 0
    evidence = (f"epochs to {threshold:.1f} % (95 % of {source}'s last value) on the seed-mean val curve, "
                "[earliest, latest] within the noise: " + ", ".join(
                    f"{a} {fmt_epoch(b[1])} [{fmt_epoch(b[0])}, {fmt_epoch(b[2])}]"
                    for a, b in ((a, bands[a]) for a in ARMS if a in bands)) + f"; {noise}")
    return directions, evidence


def across_row(claim, rows):
    """The row of a claim over several targets, from its rows per target."""
    n = len(rows)
    verdicts = [r["verdict"] for r in rows]
    by = {v: [r["dataset"] for r in rows if r["verdict"] == v] for v in VERDICTS}
    evidence = "; ".join(f"{v} on {', '.join(names)}" for v, names in by.items() if names)
    evidence += f" (needs {claim.across} of {n}; each target tested at alpha / {n})"
    said = [r["paper_table"].split(" (")[0] for r in rows]
    agree, disagree = said.count("agrees"), said.count("disagrees")
    table = ("agrees" if agree >= claim.across else "disagrees" if disagree > n - claim.across else "ties or mixed")
    row = {"claim": claim.key, "target": "all", "dataset": f"D1-D{n}" if n == 5 else f"{n} targets",
           "title": claim.title, "quote": claim.quote, "better": rows[0]["better"], "worse": rows[0]["worse"],
           "paper_table": f"{table} ({agree} of {n} agree)", "evidence": evidence, "this_run": "", "replication": ""}
    verdict = combine_across(claim, verdicts)
    readings = [r["this_run"] for r in rows if r["this_run"]]
    if readings:  # one seed: the targets' readings counted the same way
        reading = combine_across(claim, [{"agrees": "supported", "disagrees": "contradicted"}.get(
            r["this_run"], "inconclusive" if r["this_run"] else "not tested") for r in rows])
        row |= {"this_run": TABLE_WORDS.get(reading, reading), "replication": ONE_NETWORK}
    elif verdict != "not tested":
        row["replication"] = next(r["replication"] for r in rows if r["replication"])
    return row | {"verdict": verdict}


def verdicts(paired, convergence, arms_run, alpha, missing_reason=None, curves=None, sizes=None, metrics=None):
    """tables/claims.csv: one row per claim and target in its scope, and one per claim over several targets.

    paired: tables/paired.csv rows of the claims checkpoint at each target's largest train fraction;
    convergence: tables/convergence.csv; arms_run: {target: set of arms with runs}; missing_reason: why
    arms are absent, in a few words (e.g. "no ImageNet weights"; the report says it in full at its top);
    curves: {target: {arm: seed-mean curves (tables.mean_curves)}}; sizes: {target: {split: images}};
    metrics: {target: headline metric}."""
    pairs = pair_lookup(paired)
    curve_rows = {(r.target, r.arm): r for r in convergence.itertuples()}
    rows = []
    for claim in CLAIMS + beyond_claims(arms_run):
        found = [judge(claim, target, pairs, curve_rows, curves, sizes, arms_run, alpha, missing_reason,
                       (metrics or {}).get(target)) for target in claim.scope]
        rows += found
        if claim.across:
            rows.append(across_row(claim, found))
    return pd.DataFrame(rows, columns=COLUMNS)


# --------------------------------------------------------------------------- the answer per target

def answer(target, paired, summary_row, arms_run, alpha, metric_name, missing_reason=None):
    """One sentence per target: does medical pretraining beat ImageNet here, with its uncertainty.

    summary_row: {arm: (test value, ci_low, ci_high)} at the claims checkpoint. A best arm is named
    only when it is shown better than the next; with one seed the sentence says what this run shows
    and that the training noise is not measured."""
    name = f"{short_name(target)} {TARGETS[target][1]}" if target in TARGETS else target
    arms = [a for a in ARMS if a in arms_run] + beyond_paper(arms_run)  # beyond the paper: medical backbones too
    medical = sorted((a for a in arms if a not in ("IN", "RI") and a in summary_row and pd.notna(summary_row[a][0])),
                     key=lambda a: -summary_row[a][0])
    pairs = pair_lookup(paired)
    compared = [find_pair(pairs, target, *pair)[0] for pair in zip(medical, medical[1:])]
    compared += [find_pair(pairs, target, a, "IN")[0] for a in medical]
    compared = [p for p in compared if p is not None]
    n_seeds = min((int(p.n_seeds) for p in compared), default=None)
    fewest = min((_value(p, "min_class_patients") for p in compared), default=math.nan)
    too_few = fewest < stats.MIN_PATIENTS_PER_CLASS
    one = n_seeds is not None and n_seeds < 2

    def value(arm):
        v, low, high = summary_row[arm]
        return f"{v:.1f}" + (f" [{low:.1f}, {high:.1f}]" if pd.notna(low) and pd.notna(high) else "")

    def best_part():
        listing = ", ".join(f"{a} {value(a)}" for a in medical)
        if len(medical) < 2:
            return f"medical arm {listing}" if medical else "no medical arm"
        top, runner = medical[:2]
        pair, sign = find_pair(pairs, target, top, runner)
        if pair is None or too_few:
            return f"medical arms {listing}"
        d, text = performance_direction("all", pair, sign, alpha, 1, 0.0)
        if d == 1 and one:  # these two networks differ; whether the arms do is not measured
            return f"medical arms {listing} (this run: {top} > {runner}, the next, on the test set)"
        if d == 1:
            return f"best medical arm {top} {value(top)}, shown better than the next, {runner} ({text})"
        return (f"medical arms {listing} (no best arm: {top} is not shown better than {runner}, "
                f"p_Holm {fmt_p(_value(pair, 'p_holm'))})")

    spread = "" if n_seeds is None else f", {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    tail = f"; {ONE_NETWORK}" if one else ""
    if "IN" not in arms or "IN" not in summary_row:
        why = f" ({missing_reason}: {SEE_TOP})" if missing_reason else ""
        few = (f"; too few test patients for an interval (fewest per class {fewest:.0f} < "
               f"{stats.MIN_PATIENTS_PER_CLASS})" if too_few else "")
        return (f"{name}: the ImageNet arm was not run{why}, so whether medical pretraining beats ImageNet is not "
                f"tested" + (f"; test ({metric_name} in %{spread}): {best_part()}{few}{tail}." if medical else "."))
    if not medical:
        return f"{name}: no medical arm has test results; the question is not tested."
    head = f"{name} ({metric_name} in %, test{spread}): IN {value('IN')}; {best_part()}"
    if too_few:
        return (f"{head}: too few test patients for an interval (fewest per class {fewest:.0f} < "
                f"{stats.MIN_PATIENTS_PER_CLASS}), so the difference to ImageNet is not tested{tail}.")
    found = {}
    for arm in medical:
        pair, sign = find_pair(pairs, target, arm, "IN")
        if pair is None:
            return f"{head}; no paired test results, so the difference to ImageNet is not tested{tail}."
        found[arm] = performance_direction("all", pair, sign, alpha, 1, 0.0)
    better = [a for a in medical if found[a][0] == 1]
    worse = [a for a in medical if found[a][0] == -1]
    if one:
        shown = [f"{a} > IN" for a in better] + [f"IN > {a}" for a in worse]
        return (f"{head}; this run: {', '.join(shown) if shown else 'no medical arm differs from IN'} on the test set "
                f"({found[medical[0]][1]}); {ONE_NETWORK}.")
    strongest = found[better[0] if better else worse[0] if worse else medical[0]][1]
    if better and not worse:
        return f"{head}: medical pretraining beats ImageNet here ({', '.join(better)} shown better than IN; {strongest})."
    if worse and not better:
        return f"{head}: ImageNet beats medical pretraining here ({', '.join(worse)} shown worse than IN; {strongest})."
    if better:
        return f"{head}: mixed ({', '.join(better)} shown better, {', '.join(worse)} shown worse than IN)."
    return f"{head}: no medical arm is shown better or worse than ImageNet at this test size ({strongest})."
