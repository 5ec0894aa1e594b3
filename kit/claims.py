"""The paper's claims (Section 5.3) as rules, checked on this run: one verdict per claim and target.

Each claim is a statement about arms on some targets: "these arms beat those". Its verdict on a
target is one of

    supported     this run shows the claimed direction (the rule below),
    contradicted  this run shows the opposite direction for a part the claim needs,
    inconclusive  neither,
    not tested    an arm or the target the claim needs was not run (e.g. no ImageNet weights: IN,
                  Domain_IN, All_IN absent), or there are no results to compare; never "supported".

What "shows" means:

* performance claims (a, b, c, f): the paired comparison of two arms on the target's test split
  (tables/paired.csv at the claims checkpoint, by default the last epoch as in the paper's
  Table 2; seed-mean difference, paired bootstrap over test patients). X is shown better than Y
  when the difference X - Y is > 0 and its Holm-adjusted p-value is below alpha = 1 - ci (0.05):
  the percentile CI excluding 0 (the raw p-value is the smallest level at which it would),
  corrected for the 10 comparisons of the target. Holm keeps the chance of any false "shown" among
  them at most alpha, so a verdict combining several comparisons is at that level too.
* curve claims (d, e): the seed-mean of a curve measure (tables/convergence.csv); X is shown
  better than Y when it is better by at least a margin: EPOCH_MARGIN epochs for epochs-to-95 %,
  DROP_MARGIN points for the largest drop, GAIN_MARGIN points for the training gain over the last
  third. Curves have no test-split bootstrap; the margins stand in for one (the sd across seeds is
  shown next to the values). Curves shorter than MIN_CURVE_EPOCHS epochs leave a curve claim
  "not tested".

How comparisons combine, with B the arms claimed better and W those claimed worse:

    kind "all"   (every arm of B beats every arm of W; b, c, d, e, f)
                 supported when every pair (X in B, Y in W) shows X better;
                 contradicted when some pair shows Y better;
    kind "some"  (an arm of B is the best; a)
                 supported when some X in B is shown better than every Y in W;
                 contradicted when every X in B has some Y in W shown better than it;
    otherwise inconclusive. Claim e1 also needs IN's training curve to be still rising (late gain >
    GAIN_MARGIN) for "supported", and a levelled-off IN curve contradicts it.

The paper's own Table 2 is put through the same rule (direction = the sign of the difference of
its validation values, equal values showing nothing), so each row also says whether the paper's
numbers agree with its text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .paper import ARMS, TABLE2, TARGETS, short_name

VERDICTS = ("supported", "contradicted", "inconclusive", "not tested")
MEDICAL = ("Domain_RI", "Domain_IN", "All_RI", "All_IN")
OTHERS = ("IN", "Domain_RI", "Domain_IN")
EPOCH_MARGIN = 1.0   # epochs: "converges earlier" needs at least one epoch sooner to 95 % of the best
DROP_MARGIN = 2.0    # points: "more stable" / "sharper dips" needs a largest drop at least this much smaller / larger
GAIN_MARGIN = 2.0    # points: a training curve that still gains more than this over its last third has not converged
MIN_CURVE_EPOCHS = 5  # curve claims on fewer epochs are not tested: too short to tell how a curve converges
D1_D3 = ("shenzhen", "covid19_radiography", "kather2016")
# The paper's Table 2 put through a claim's rule: does it bear out the paper's text?
TABLE_WORDS = {"supported": "agrees", "contradicted": "disagrees", "inconclusive": "ties or mixed"}


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    quote: str                          # the paper's words (Section 5.3)
    scope: dict                         # target -> (arms claimed better, arms claimed worse)
    kind: str = "all"                   # "all" | "some" (see the module docstring)
    measure: str = "test"               # "test" (paired comparisons) or a column of tables/convergence.csv
    label: str = ""                     # how the evidence names the measure
    margin: float = 0.0                 # curve measures: the smallest difference that counts
    still_rising: str | None = None     # e1: this arm's training curve must still be rising


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
          _same(MEDICAL, ("IN",), D1_D3), measure="epochs_to_95", label="val epochs to 95 % of best",
          margin=EPOCH_MARGIN),
    Claim("d2", "Medical models converge more stably than IN (D1-D3)",
          "an early and stabilized flow towards convergence [...] IN [...] an unstable convergence curve",
          _same(MEDICAL, ("IN",), D1_D3), measure="max_drop", label="largest val drop (pp)", margin=DROP_MARGIN),
    Claim("e1", "On D4/D5 the IN model does not converge in the fixed number of epochs (training curve)",
          "Both the datasets have shown similar performance behavior to a), b), and c) for training sets, though "
          "the IN model does not converge in the fixed number of epochs.",
          _same(MEDICAL, ("IN",), ("messidor", "deepdrid")), measure="train_late_gain",
          label="training gain over the last third (pp)", margin=GAIN_MARGIN, still_rising="IN"),
    Claim("e2", "On D4 the IN model shows sharp dips (\"ditches\") in validation",
          "Despite the nearly equal performance, sharp ditches have been shown by the IN model for the d) dataset.",
          _same(MEDICAL, ("IN",), ("messidor",)), measure="max_drop", label="largest val drop (pp)",
          margin=DROP_MARGIN),
    Claim("f", "On D5, All_IN and the EFI models beat IN and All_RI",
          "for the e) dataset, All_IN and domain-specific models (EFI_IN and EFI_RI) have shown better metric values "
          "than the other two.", _same(("All_IN", "Domain_RI", "Domain_IN"), ("IN", "All_RI"), ("deepdrid",))),
]


# --------------------------------------------------------------------------- directions

def pair_lookup(paired: pd.DataFrame) -> dict:
    """{(target, arm, reference): row} of the headline bootstrap comparisons in `paired` (one
    checkpoint and train fraction)."""
    rows = paired[paired["method"] != "DeLong"]
    return {(r.target, r.arm, r.reference): r for r in rows.itertuples()}


def test_direction(pairs, target, x, y, alpha):
    """+1 when x is shown better than y (difference > 0, Holm p < alpha), -1 when y is shown better,
    0 when neither, None when the two were not compared; and the evidence text."""
    row, sign = pairs.get((target, x, y)), 1
    if row is None:
        row, sign = pairs.get((target, y, x)), -1
    if row is None:
        return None, f"{x} vs {y}: not compared"
    # + 0.0: a negated 0 would print as "-0.0"
    difference, low, high = sign * row.difference + 0.0, *sorted((sign * row.ci_low + 0.0, sign * row.ci_high + 0.0))
    shown = pd.notna(row.p_holm) and row.p_holm < alpha and difference != 0
    p = "n/a" if pd.isna(row.p_holm) else ("< 0.001" if row.p_holm < 0.001 else f"{row.p_holm:.3f}")
    text = f"{x} − {y} {difference:+.1f} pp [{low:.1f}, {high:.1f}], p_Holm {p}"
    return (int(math.copysign(1, difference)) if shown else 0), text


def measure_direction(values, x, y, margin):
    """Curve measures, lower is better: +1 when x is lower than y by at least `margin`, -1 when higher."""
    a, b = values.get(x), values.get(y)
    if a is None or b is None or pd.isna(a) or pd.isna(b):
        return None
    return 1 if a <= b - margin else -1 if a >= b + margin else 0


def combine(kind, directions):
    """Verdict from {(x, y): direction} over every pair the claim needs (x claimed better)."""
    better = list(dict.fromkeys(x for x, _ in directions))
    worse = list(dict.fromkeys(y for _, y in directions))
    if kind == "all":
        if all(d == 1 for d in directions.values()):
            return "supported"
        if any(d == -1 for d in directions.values()):
            return "contradicted"
        return "inconclusive"
    if any(all(directions[x, y] == 1 for y in worse) for x in better):
        return "supported"
    if all(any(directions[x, y] == -1 for y in worse) for x in better):
        return "contradicted"
    return "inconclusive"


def paper_table_verdict(claim, target):
    """The same rule on the paper's Table 2 validation values (curve claims: None)."""
    if claim.measure != "test":
        return None
    better, worse = claim.scope[target]
    val = {arm: TABLE2[target][arm][1] for arm in ARMS}
    directions = {(x, y): (val[x] > val[y]) - (val[x] < val[y]) for x in better for y in worse}
    shown = ", ".join(f"{x} {val[x]:.1f}" for x in dict.fromkeys(better + worse))
    return combine(claim.kind, directions), shown


# --------------------------------------------------------------------------- verdicts

def verdicts(paired, convergence, arms_run, alpha, missing_reason=None):
    """tables/claims.csv: one row per claim and target in its scope.

    paired: tables/paired.csv rows of the claims checkpoint at each target's largest train
    fraction; convergence: tables/convergence.csv; arms_run: {target: set of arms with runs};
    missing_reason: why arms are absent (e.g. "no ImageNet weights"), for the "not tested" rows."""
    pairs = pair_lookup(paired)
    curve = {(r.target, r.arm): r for r in convergence.itertuples()}
    rows = []
    for claim in CLAIMS:
        for target, (better, worse) in claim.scope.items():
            row = {"claim": claim.key, "target": target, "dataset": short_name(target), "title": claim.title,
                   "quote": claim.quote, "better": " ".join(better), "worse": " ".join(worse)}
            table = paper_table_verdict(claim, target)
            row["paper_table"] = (f"{TABLE_WORDS[table[0]]} ({table[1]})" if table else paper_curve_note(claim, target))
            needed = set(better) | set(worse)
            absent = [a for a in ARMS if a in needed - arms_run.get(target, set())]
            if target not in arms_run:
                rows.append(row | {"verdict": "not tested", "evidence": f"{short_name(target)} not run"})
                continue
            if absent:
                why = f" ({missing_reason})" if missing_reason and set(absent) & {"IN", "Domain_IN", "All_IN"} else ""
                rows.append(row | {"verdict": "not tested", "evidence": f"not run: {', '.join(absent)}{why}"})
                continue
            if claim.measure == "test":
                found = {(x, y): test_direction(pairs, target, x, y, alpha) for x in better for y in worse}
                directions = {k: d for k, (d, _) in found.items()}
                evidence = "; ".join(text for _, text in found.values())
            else:
                epochs = min((curve[target, a].epochs for a in needed if (target, a) in curve), default=0)
                if epochs < MIN_CURVE_EPOCHS:
                    rows.append(row | {"verdict": "not tested", "evidence": f"curves of {epochs} epoch(s): too short "
                                       f"to tell how they converge (needs >= {MIN_CURVE_EPOCHS})"})
                    continue
                values = {a: getattr(curve[target, a], claim.measure) if (target, a) in curve else None for a in needed}
                sds = {a: getattr(curve[target, a], f"{claim.measure}_sd") if (target, a) in curve else None
                       for a in needed}
                directions = {(x, y): measure_direction(values, x, y, claim.margin) for x in better for y in worse}
                def shown(v):  # epochs are counts: '3', a mean over seeds '2.5'
                    return f"{v:.0f}" if claim.measure.endswith("epochs_to_95") and float(v).is_integer() else f"{v:.1f}"

                evidence = f"{claim.label}: " + ", ".join(
                    f"{a} {shown(values[a])}" + (f" ± {sds[a]:.1f}" if sds[a] is not None and pd.notna(sds[a]) else "")
                    for a in ARMS if a in needed and values[a] is not None and pd.notna(values[a]))
            if any(d is None for d in directions.values()):
                rows.append(row | {"verdict": "not tested", "evidence": evidence or "no results to compare"})
                continue
            verdict = combine(claim.kind, directions)
            if claim.still_rising and values[claim.still_rising] <= claim.margin:  # e1: IN's own curve levelled off
                verdict = "contradicted"
            rows.append(row | {"verdict": verdict, "evidence": evidence})
    return pd.DataFrame(rows, columns=["claim", "target", "dataset", "title", "quote", "better", "worse",
                                       "paper_table", "evidence", "verdict"])


def paper_curve_note(claim, target):
    """What the paper's Table 2 says about a curve claim: the training values at the last epoch."""
    train = {arm: TABLE2[target][arm][0] for arm in ARMS}
    others = [train[a] for a in MEDICAL]
    figure = "Fig. 3" if target in D1_D3 else "Fig. 4"
    return (f"curves only ({figure}); Table 2 training at the last epoch: IN {train['IN']:.1f}, medical arms "
            f"{min(others):.1f}-{max(others):.1f}")


# --------------------------------------------------------------------------- the answer per target

def answer(target, paired, summary_row, arms_run, alpha, metric_name, missing_reason=None):
    """One sentence per target: does medical pretraining beat ImageNet here, with its uncertainty.

    summary_row: {arm: (test value, ci_low, ci_high)} at the claims checkpoint."""
    name = f"{short_name(target)} {TARGETS[target][1]}" if target in TARGETS else target
    arms = [a for a in ARMS if a in arms_run]
    medical = [a for a in arms if a in MEDICAL and a in summary_row and pd.notna(summary_row[a][0])]

    def value(arm):
        v, low, high = summary_row[arm]
        return f"{v:.1f}" + (f" [{low:.1f}, {high:.1f}]" if pd.notna(low) and pd.notna(high) else "")

    if "IN" not in arms or "IN" not in summary_row:
        best = max(medical, key=lambda a: summary_row[a][0]) if medical else None
        why = f" ({missing_reason})" if missing_reason else ""
        return (f"{name}: the ImageNet arm was not run{why}, so whether medical pretraining beats ImageNet is not "
                f"tested" + (f"; best arm on test ({metric_name} in %): {best} {value(best)}." if best else "."))
    if not medical:
        return f"{name}: no medical arm has test results; the question is not tested."
    pairs = pair_lookup(paired)
    found = {a: test_direction(pairs, target, a, "IN", alpha) for a in medical}
    if any(d is None for d, _ in found.values()):
        return f"{name}: IN {value('IN')}; no paired test results, so the difference to ImageNet is not tested."
    better = [a for a in medical if found[a][0] == 1]
    worse = [a for a in medical if found[a][0] == -1]
    best = max(medical, key=lambda a: summary_row[a][0])
    head = f"{name} ({metric_name} in %, test): IN {value('IN')}; best medical arm {best} {value(best)}; {found[best][1]}"
    if better and not worse:
        return f"{head}: medical pretraining beats ImageNet here ({', '.join(better)} shown better than IN)."
    if worse and not better:
        return f"{head}: ImageNet beats medical pretraining here ({', '.join(worse)} shown worse than IN)."
    if better:
        return (f"{head}: mixed ({', '.join(better)} shown better, {', '.join(worse)} shown worse than IN).")
    return f"{head}: no medical arm is shown better or worse than ImageNet at this test size."
