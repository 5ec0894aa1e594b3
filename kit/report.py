"""Markdown: the paper's Table 2 with held-out test CIs, and OUT/report.md, the one page that ties
the study's tables and figures together. report.md opens with what was run and what was not (the
reason an arm is missing said once, there), then the answer per target and the paper's claims with
their verdicts (kit/claims.py). Every table keeps to a few short columns (TABLE_WIDTH characters a
row at most), so it reads in any markdown viewer; prose goes in lists.
"""
import dataclasses
import math
from pathlib import Path

import pandas as pd

from .claims import CLAIMS, LEVELLED_OFF, MARGIN, MIN_CURVE_EPOCHS, ONE_NETWORK, fmt_p, margin
from .paper import (ARMS, CURVE_SPLITS, LIMITS, NO_PATIENT_IDS, SETTINGS, SOURCE_IMAGES, TARGETS,
                    metric_label, short_name, target_title)
from .recipe import describe as recipe_words
from .stats import DEFAULT_RESAMPLES, MIN_PATIENTS_PER_CLASS
from .tables import CONVERGENCE as THRESHOLD_SHARE  # "earlier": 95 % of the best arm's last value

TABLE_WIDTH = 200   # characters of a table row: wider rows go to lists
TOO_FEW = "too few test patients for an interval"
TOO_FEW_MARK = "‡"  # a table cell's estimate without an interval; the note under the table says why


def fmt(value, digits=1):
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def fmt_count(value):
    """A count such as epochs: '3', not '3.0' (a mean over seeds keeps one decimal: '2.5')."""
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def fmt_mean(mean, sd=math.nan, low=math.nan, high=math.nan, count=False):
    """'81.2', '81.2 ± 1.3', '81.2 [72.0, 90.1]' or '81.2 ± 1.3 [72.0, 90.1]' (n/a when missing)."""
    if mean is None or pd.isna(mean):
        return "n/a"
    text = (fmt_count(mean) if count else fmt(mean)) + (f" ± {fmt(sd)}" if pd.notna(sd) else "")
    return text + (f" [{fmt(low)}, {fmt(high)}]" if pd.notna(low) and pd.notna(high) else "")


def too_few(fewest):
    """True when the fewest test patients of a class are below stats.MIN_PATIENTS_PER_CLASS."""
    return fewest is not None and pd.notna(fewest) and fewest < MIN_PATIENTS_PER_CLASS


def fmt_test(mean, sd=math.nan, low=math.nan, high=math.nan, fewest=None, mark=False):
    """fmt_mean of a test value, or the estimate with 'too few test patients for an interval' (in a
    table: the estimate and TOO_FEW_MARK, explained by too_few_note under the table)."""
    if too_few(fewest) and mean is not None and pd.notna(mean):
        return fmt_mean(mean, sd) + (f" {TOO_FEW_MARK}" if mark else f" ({TOO_FEW})")
    return fmt_mean(mean, sd, low, high)


def too_few_note(fewest_values):
    """The note under a table holding TOO_FEW_MARK cells, or nothing."""
    fewest = [f for f in fewest_values if too_few(f)]
    if not fewest:
        return []
    return ["", f"{TOO_FEW_MARK} {TOO_FEW}: fewer than {MIN_PATIENTS_PER_CLASS} test patients in a class (here "
                f"{min(fewest):.0f}); the estimate alone.", ""]


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def spread_words(n_seeds):
    """How a value over seeds is given: 'mean ± sd across seeds' only where there are several."""
    return "mean ± sd across seeds" if n_seeds > 1 else "one seed, no sd across seeds"


def test_size(n_images, n_patients):
    """'n = 20 images, 5 patients' (the bootstrap resamples patients); images alone where that is all."""
    if n_images is None or pd.isna(n_images):
        return "n unknown"
    if n_patients is None or pd.isna(n_patients) or n_patients == n_images:
        return f"n = {n_images:.0f} images" + ("" if n_patients is None or pd.isna(n_patients) else " (one per patient)")
    return f"n = {n_images:.0f} images, {n_patients:.0f} patients"


def table2_markdown(table, table_arms, notes, ci, level="##"):
    """Paper Table 2: one block per metric (Accuracy (%), Kappa Score (%), ...), rows Dx Training/Validation,
    then the held-out test block: mean [CI] of the best-validation and the last checkpoint."""
    headers = list(table_arms)  # the arms as the study names them everywhere
    n_seeds = int(table["n_seeds"].max()) if len(table) else 0
    lines = [f"{level} Table 2. Model's performance at last epoch", ""]
    for metric, block in table.groupby("metric", sort=False):
        lines += [f"{level}# {metric_label(metric)} (%)", ""]
        rows = []
        for target, runs in block.groupby("target", sort=False):
            by_arm = runs.set_index("arm")
            for split, split_name in CURVE_SPLITS:
                rows.append([target_title(target), split_name]
                            + [fmt_mean(by_arm.at[a, split], by_arm.at[a, f"{split}_sd"]) for a in table_arms])
        lines += markdown_table(["Dataset", ""] + headers, rows)
        block_notes = "; ".join(notes[t] for t in block["target"].unique())
        lines += ["", f"Values at each run's last logged epoch ({spread_words(n_seeds)}); n/a = arm not run. "
                      f"{block_notes}.", ""]
    tested = table[table["test"].notna() | table["test_last"].notna()]
    if not tested.empty:
        lines += [f"{level}# Held-out test", ""]
        rows = []
        for target, runs in tested.groupby("target", sort=False):
            by_arm = table[table["target"] == target].set_index("arm")
            for prefix, name in (("test", "best-val"), ("test_last", "last epoch")):
                rows.append([target_title(target), f"{metric_label(runs['metric'].iloc[0])}, {name}"]
                            + [fmt_test(by_arm.at[a, prefix], by_arm.at[a, f"{prefix}_sd"],
                                        by_arm.at[a, f"{prefix}_ci_low"], by_arm.at[a, f"{prefix}_ci_high"],
                                        by_arm.at[a, "min_class_patients"] if "min_class_patients" in by_arm else None,
                                        mark=True)
                               for a in table_arms])
        lines += markdown_table(["Dataset", "Checkpoint (%)"] + headers, rows)
        sizes = "; ".join(f"{short_name(t)} {test_size(runs['n_test'].max(), runs['n_test_patients'].max())}"
                          for t, runs in tested.groupby("target", sort=False))
        interval = ("CI with the seeds' spread and the patient bootstrap" if n_seeds > 1 else
                    f"bootstrap CI over test patients; {ONE_NETWORK}")
        lines += ["", f"Test split (never used for training or model selection; the paper has none): "
                      f"{'mean over seeds ± sd across seeds' if n_seeds > 1 else 'one seed'} "
                      f"[{100 * ci:g} % {interval}]; best-val = the best-validation checkpoint; {sizes}.", ""]
        lines += too_few_note(tested["min_class_patients"] if "min_class_patients" in tested else [])
    return "\n".join(lines)


def epoch_note(target, epochs, sizes):
    epochs = sorted(set(epochs))
    span = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    text = " / ".join(f"{s} {n}" for s, n in sizes.items()) if sizes else None
    return f"{short_name(target)}: epoch {span}, " + (f"images {text}" if text else "split sizes unknown")


# --------------------------------------------------------------------------- report.md sections

def beyond_arm(arm, study):
    """An arm beyond the paper's, described from study.json: a published file's layout and hash, or the
    balancing of an All model."""
    published = (study.get("extra_arms") or {}).get(arm)
    if published:
        return (f"{arm} = {published['layout']} DenseNet-121 `{Path(published['file']).name}` (sha256 "
                f"{published['sha256']})")
    if arm.endswith("_bal") and study.get("balanced_all"):
        return f"{arm} = {arm[:-4]} pretrained with each source drawn by --balance {study['balanced_all']}"
    return arm


DEMO_WORDS = ("generated pictures in the datasets' layouts, not patients. The numbers below only show that the "
              "pipeline runs; they mean nothing about medicine or about the paper's question.")


def data_line(manifests) -> str:
    """The Data line of a folder without study.json (stages run by hand), from what the manifests' JSON records:
    {key: {"root": folder, "demo_data": DEMO_DATA.json of tools/make_demo_data.py, None (the manifest says the
    data are not generated) or absent (it says nothing)}} (results.manifest_data)."""
    manifests = manifests or {}
    demo = {key: m["demo_data"] for key, m in manifests.items() if m.get("demo_data")}
    own = {key: m["root"] for key, m in manifests.items() if "demo_data" in m and not m["demo_data"] and m.get("root")}
    unknown = [key for key in manifests if key not in demo and key not in own]
    drawn = {}  # "seed S, scale X" -> the data sets drawn so
    for key, record in demo.items():
        scale = record.get("scale")
        scale = f"{scale:g}" if isinstance(scale, (int, float)) else scale
        drawn.setdefault(f"seed {record.get('seed')}, scale {scale}", []).append(key)
    how = "; ".join(f"{words}: {', '.join(keys)}" if len(drawn) > 1 else words for words, keys in drawn.items())
    folders = "; ".join(f"{key} `{root}`" for key, root in own.items())
    if demo and not own and not unknown:
        return (f"- **Data: generated demo data** ({how}) — the kit's tools/make_demo_data.py, not real images (the "
                f"manifests record it; no study.json here): {DEMO_WORDS}")
    if own and not demo and not unknown:
        return (f"- Data: read from {folders} (the manifests record it: none is the kit's generated demo data; no "
                "study.json here: the stages were run by hand).")
    if not demo and not own:
        return ("- **Data: unknown** (no study.json in this folder: it was not written by the study workflow, and the "
                "manifests record no origin); check whether the runs used real data before reading anything into "
                "the numbers.")
    parts = []
    if demo:
        parts.append(f"generated demo data for {', '.join(demo)} (tools/make_demo_data.py, not real images; {how})")
    if own:
        parts.append(f"read from {folders}")
    if unknown:
        parts.append(f"unknown for {', '.join(unknown)} (the manifests record no origin)")
    return (f"- **Data: mixed** (from the manifests; no study.json here): {'; '.join(parts)}. Numbers of generated "
            "data mean nothing about medicine.")


def what_was_run(study, runs_arms, targets, seeds, settings_line, missing_reason, claims_checkpoint, domains=None,
                 strategy=None, manifests=None):
    """The top of report.md: the data, the arms run and not run and why (said here, once), the seeds
    and what they replicate, the sizes, the known limits of the targets' data. `manifests`: what the
    manifests' JSON says of the data (data_line), for a folder without study.json."""
    lines = ["## What was run", ""]
    if strategy:
        lines.append(f"- Fine-tuning strategy: **{STRATEGY_WORDS.get(strategy, strategy)}** "
                     f"(finetune_target.py --strategy {strategy}).")
    if study is None:
        lines.append(data_line(manifests))
    elif study.get("demo"):
        lines.append(f"- **Data: synthetic demo data** (tools/make_demo_data.py, scale {study.get('demo_scale')}): "
                     + DEMO_WORDS)
    else:
        lines.append(f"- Data: the downloads in `{study['data']}`.")
    others = [t for t in targets if (domains or {}).get(t) == "other"]
    run_everywhere = [a for a in ARMS if all(a in runs_arms.get(t, set()) for t in targets
                                             if not (t in others and a.startswith("Domain_")))]
    absent = [a for a in ARMS if a not in run_everywhere]
    lines.append(f"- Targets: {', '.join(target_title(t) for t in targets)}; arms run: "
                 f"{', '.join(run_everywhere) or 'none on every target'}.")
    beyond = sorted({a for arms in runs_arms.values() for a in arms} - set(ARMS) - {"RI"})
    if beyond:
        lines.append(f"- Arms beyond the paper: {'; '.join(beyond_arm(a, study or {}) for a in beyond)}. They enter "
                     "Table 2, the paired comparisons, the answers and claims (x…) below as medical initialisations.")
    skipped = [t for t in TARGETS if t not in targets]
    if skipped:
        lines.append(f"- Targets not run: {', '.join(target_title(t) for t in skipped)} (the targets setting); their "
                     "claims read \"not tested\".")
    for target in others:
        lines.append(f"- {target_title(target)} is of domain *other*: no source dataset of its area was pretrained, so "
                     f"it has no Domain_RI or Domain_IN arm; RI (random init, no pretraining) is the floor its "
                     f"transfers are measured against.")
    if absent:
        why = f": {missing_reason}" if missing_reason else ""
        lines.append(f"- **Not run: {', '.join(absent)}**{why}. Their cells read n/a and every claim that needs them "
                     "is \"not tested\" (below: \"see What was run\"). " + (
                         "Rerun with IMAGENET_WEIGHTS=/path/to/densenet121-a639ec97.pth to run all five arms."
                         if missing_reason else ""))
    if study is not None:
        size = study.get("image_size")
        lines.append(f"- Images at {size} px (paper: 224); {study.get('epochs_pretrain')} pretraining and "
                     f"{study.get('epochs_finetune')} fine-tuning epochs (paper: not stated); sources prepared with "
                     f"the {study.get('source_protocol', 'paper')} protocol.")
    if len(seeds) == 1:
        lines.append(f"- Seeds: {seeds[0]} — {ONE_NETWORK}. The CIs show the test-sampling noise of these networks "
                     "only; no claim can be supported, and each reads \"not tested\" with what this run shows. Run "
                     "seeds=\"[0,1,2]\" for verdicts about the pretraining arms.")
    else:
        pretrained_once = study is not None and study.get("pretrain_seed") not in (None, "")
        lines.append(f"- Seeds: {', '.join(map(str, seeds))}: the training run is the unit of replication; CIs and "
                     "p-values add the spread across seeds to the test-sampling noise. " + (
                         f"Pretrained once (PRETRAIN_SEED={study.get('pretrain_seed')}): every seed's arms start from "
                         "the same pretrained models, so the spread across seeds leaves out the pretraining's noise "
                         "and the verdicts are about these pretrained models, not the pretraining recipe."
                         if pretrained_once else "Each seed's arms fine-tune from models pretrained with that seed, "
                         "so the spread includes the pretraining's noise."))
    lines.append(f"- The paper has no test split and reports the last epoch's validation values (Table 2). This run "
                 f"also tests every target on a held-out test split; the answers and the claims below use the "
                 f"{'last-epoch' if claims_checkpoint == 'last' else 'best-validation'} checkpoint's test results.")
    limits = [LIMITS[t] for t in targets if t in LIMITS]
    if any(t in NO_PATIENT_IDS for t in targets):
        limits.append(LIMITS[None])
    if limits:
        lines.append(f"- Known limits of the data: {'; '.join(limits)}.")
    if settings_line:
        lines.append(f"- {settings_line}")
    return lines + [""]

def claims_section(claims, ci, bootstrap, paired=None):
    """The claims: a narrow table of verdicts (one row per claim and target), then the evidence of each
    row as a list, then the rules with the number of comparisons each target's Holm correction counted."""
    lines = ["## The paper's claims, checked", ""]
    lines += [f"- ({c.key}) {c.title} (Section {c.section}): \"{c.quote}\"" for c in CLAIMS]
    beyond = claims[claims["claim"].str.startswith("x")].drop_duplicates("claim")
    lines += [f"- ({r.claim}) {r.title}: {r.quote}" for r in beyond.itertuples()]
    lines.append("")
    rows = []
    for r in claims.itertuples():
        verdict = f"**{r.verdict}**" + (f": {r.replication}" if r.replication and r.this_run else "")
        rows.append([f"({r.claim})", r.dataset, verdict, r.this_run or "—", str(r.paper_table).split(" (")[0]])
    lines += markdown_table(["Claim", "Dataset", "Verdict", "This run alone", "Paper's Table 2"], rows)
    lines += ["", "Evidence (this run's test split or curves; the paper's Table 2 validation values):", ""]
    for r in claims.itertuples():
        replication = f" [{r.replication}]" if r.replication else ""
        lines.append(f"- ({r.claim}) {r.dataset}: **{r.verdict}**{replication} — {r.evidence}. Paper's Table 2: "
                     f"{r.paper_table}.")
    alpha = 1 - ci
    corrected = ""
    if paired is not None and len(paired) and "holm_m" in paired:
        headline = paired[paired["method"] != "DeLong"].groupby("target", sort=False)["holm_m"].max()
        corrected = ", ".join(f"{short_name(t)} {int(m)}" for t, m in headline.items() if pd.notna(m))
    lines += ["", f"Verdict rules (kit/claims.py, docs/statistics.md). The training run is the unit of replication: "
                  f"with one seed no claim is supported (\"{ONE_NETWORK}\"; \"This run alone\" says whether this "
                  "run's networks agree). Performance claims: an arm is *shown* better than another when their paired "
                  f"test difference is > 0 with a Holm-adjusted p < {alpha:g}; the p carries the seeds' spread and a "
                  "patient bootstrap; Holm corrects for the comparisons of each target actually run"
                  + (f" ({corrected})" if corrected else "") + ". (j) and (k) use a margin of "
                  f"{MARGIN:g} points of accuracy, {margin('messidor', 'kappa'):g} / {margin('deepdrid', 'kappa'):g} "
                  "points of kappa on D4 / D5 (the same number of changed decisions). Curve claims: the noise of a "
                  "value on n images (binomial, at most 50/sqrt(n) points; twice for a kappa) plus the seeds' spread; "
                  f"earlier = before the other arm's band can reach {100 * THRESHOLD_SHARE:g} % of the best arm's last "
                  f"value; (e1) also needs IN's training curve shown still rising, and IN's gain shown below "
                  f"{LEVELLED_OFF:g} points contradicts it; curves of fewer than {MIN_CURVE_EPOCHS} epochs are "
                  "\"not tested\". Claims over several targets test each at alpha / 5. The paper's Table 2 column "
                  "puts the paper's own validation values through the same rules with no noise. tables/claims.csv."]
    if bootstrap < DEFAULT_RESAMPLES:
        lines.append(f"With {bootstrap} bootstrap resamples the smallest one-seed p-value is {2 / (bootstrap + 1):.4f}: "
                     f"near a Holm threshold it rests on a handful of resamples; use --bootstrap "
                     f"{DEFAULT_RESAMPLES} or more.")
    return lines + [""]

def paper_vs_run_section(comparison, rankings, ci, n_seeds):
    if comparison.empty:
        return []
    lines = ["## The paper's Table 2 next to this run", ""]
    rows = []
    for r in comparison.itertuples():
        rows.append([target_title(r.target), r.arm, fmt(r.paper_val), fmt_mean(r.val, r.val_sd),
                     "n/a" if pd.isna(r.val_minus_paper) else f"{r.val_minus_paper:+.1f}",
                     fmt_test(r.test, r.test_sd, r.test_ci_low, r.test_ci_high, getattr(r, "min_class_patients", None),
                              mark=True)])
    checkpoint = comparison["checkpoint"].iloc[0]
    lines += markdown_table(["Target", "Arm", "Paper val (%)", "This run val (%)", "Δ val (pp)",
                             f"Test (%), {'last epoch' if checkpoint == 'last' else 'best-val'} [{100 * ci:g} % CI]"],
                            rows)
    lines += too_few_note(comparison["min_class_patients"] if "min_class_patients" in comparison else [])
    lines += ["", f"Paper: Table 2, last epoch, one value per arm (no spread), validation split. This run: last epoch, "
                  f"{spread_words(n_seeds)}; Δ = this run's validation value − the paper's. The validation and test "
                  "splits are not the paper's (it states none for the targets), so Δ mixes the data split, the "
                  "settings the paper does not state and the noise. tables/paper_vs_run.csv.", ""]
    rows = [[target_title(r.target), r.paper_val or "n/a", r.val or "n/a", r.test or "n/a"]
            for r in rankings.itertuples()]
    lines += ["Ranking of the arms, best first ('=' where equal at one decimal):", ""]
    lines += markdown_table(["Target", "Paper (val)", "This run (val)", "This run (test)"], rows)
    return lines + ["", "tables/rankings.csv.", ""]


def data_section(metrics, sizes, summary, sources):
    lines = ["## Data", ""]
    rows = []
    for target in metrics:
        counts = sizes.get(target) or {}
        patients = summary.loc[summary["target"] == target, "n_patients"].dropna()
        rows.append([target_title(target), metric_label(metrics[target]),
                     *(fmt(counts.get(split), 0) for split in ("train", "val", "test")),
                     fmt(patients.max() if len(patients) else None, 0)])
    lines += markdown_table(["Target", "Headline metric", "Train images", "Val images", "Test images",
                             "Test patients"], rows)
    lines += ["", "Targets: patient-level, stratified, seeded splits made once by prepare_data.py; every run of a "
                  "target is tested on the same test images, which are never used for training or model selection. "
                  "A train fraction < 1 takes a nested, stratified, patient-level subset of the train split.", ""]
    if sources:
        rows = [[key, meta.get("protocol", "held-out-test"), *(fmt(meta["sizes"].get(s), 0) for s in ("train", "val",
                                                                                                    "test")),
                 f"{SOURCE_IMAGES[key]:,}" if key in SOURCE_IMAGES else "n/a"] for key, meta in sources.items()]
        lines += markdown_table(["Source", "Protocol", "Train images", "Val images", "Test images",
                                 "Paper's image count"], rows)
        lines += ["", "Sources: the paper's protocol takes every image (ChestX-ray14's official test list too; "
                      "EyePACS with its test images of grades 1-4, not those of grade 0), 90/10 train/val by patient, "
                      "no test split; the All set is their union (paper: 169,198 images).", ""]
    return lines


def overlap_section(found, record, mode, seen, twins):
    """The same picture in a source and a target, or twice in a target (check_overlap.py, prepare_data.py):
    what was found per target and source, what was done, and whether the test images were unseen.

    found: OUT/overlap/summary.csv (None: not checked); record: its overlap.json; mode: study.json's
    overlap ("drop" | "keep", None: unknown); seen: {target: [seen_in_pretraining per evaluation]};
    twins: {target: the manifest's twins record}."""
    lines = ["## The same picture in a source and a target", ""]
    if found is None:
        return lines + ["Not checked (no `overlap/` folder: check_overlap.py was not run). Public data sets borrow "
                        "each other's images, so a target's test image may have been seen in pretraining, and a "
                        "picture may sit in two splits under two names; run check_overlap.py to know.", ""]
    rows = []
    for r in found.itertuples():
        what = ("—" if not r.found else "twins in two splits" if r.source == r.target else
                "left out of pretraining" if mode == "drop" else
                "**kept in pretraining** (overlap: keep, the paper's way)" if mode == "keep" else "unknown")
        rows.append([target_title(r.target), "itself" if r.source == r.target else r.source,
                     f"{r.found} of {r.target_images}", f"{r.found_train} / {r.found_val} / {r.found_test}",
                     "" if r.source == r.target else f"{r.source_matched} of {r.source_images}", what])
    lines += markdown_table(["Target", "Found in", "Target images", "Train / val / test", "Source images",
                             "Done"], rows)
    twin_notes = [f"{target_title(t)}: {info['groups']} picture(s) there twice or more under other names "
                  f"({info['images']} images), each kept in one split" for t, info in twins.items()
                  if info and info.get("groups")]
    lines += [""] + [f"- {note}." for note in twin_notes]
    for target, values in seen.items():
        checked = [v for v in values if v is not None]
        if not values or len(checked) < len(values):
            lines.append(f"- {target_title(target)}: not every evaluation was checked against the pretraining.")
        elif max(checked, default=0) > 0:
            lines.append(f"- **{target_title(target)}: up to {max(checked)} test image(s) were seen in pretraining** "
                         "by a pretrained arm: its results there favour the arms pretrained on them.")
        else:
            lines.append(f"- {target_title(target)}: every arm was tested on images no pretraining saw.")
    thresholds = ", ".join(f"{k} {v:g}" for k, v in (record or {}).get("match_distance", {}).items())
    lines += ["", "Pictures are matched up to resizing, re-encoding, 8/16 bit, grey/RGB, a border crop of a few % "
                  "and mild brightness or contrast changes (check_overlap.py; aligned thumbnail distance thresholds "
                  f"per domain: {thresholds or 'n/a'}); a flip, rotation or heavy crop is not caught.", ""]
    return lines


def paired_section(pairs, reporting, pairing_notes):
    lines = []
    if not pairs.empty:
        kind = "last-epoch" if reporting.claims_checkpoint == "last" else "best-validation"
        lines += [f"## Paired comparisons (test split, {kind} checkpoint, all pairs of arms)", ""]
        rows, discrete = [], False
        for r in pairs[pairs["method"] != "DeLong"].itertuples():
            interval = f"{fmt(r.difference)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
            if too_few(getattr(r, "min_class_patients", None)):
                interval = f"{fmt(r.difference)} {TOO_FEW_MARK}"
            elif zero_edge(r, 1 - reporting.ci):
                interval, discrete = interval + " †", True
            rows.append([target_title(r.target), f"{r.arm} − {r.reference}", str(int(r.n_seeds)), interval,
                         fmt_p(r.p_value), fmt_p(r.p_holm) + (f" ({r.holm_m:.0f})" if getattr(r, "holm_m", 0) else "")])
        lines += markdown_table(["Target", "Comparison", "Seeds", f"Difference (pp) [{100 * reporting.ci:g} % CI]", "p",
                                 "p Holm (of m)"], rows)
        lines += ["", f"The later arm (paper order IN, Domain_RI, Domain_IN, All_RI, All_IN) minus the earlier, on the "
                      f"same test images and seeds (mean over seeds; headline metric). Two or more seeds: the seeds' "
                      f"spread plus a patient bootstrap of the seed-mean ({reporting.bootstrap} resamples, seed "
                      f"{reporting.seed}), t with Welch's degrees of freedom. One seed: the percentile bootstrap over test "
                      f"patients of those two networks ({ONE_NETWORK}). Multiple comparisons: Holm's correction within "
                      "each target, over the m comparisons actually run (DeLong's separately). The other checkpoint "
                      "and every fraction: tables/paired.csv; figure: figures/forest.png.", ""]
        if discrete:
            lines += [f"† {DISCRETE}", ""]
        lines += too_few_note(pairs["min_class_patients"] if "min_class_patients" in pairs else [])
        delong = pairs[pairs["method"] == "DeLong"]
        if not delong.empty:
            rows = [[target_title(r.target), f"{r.arm} − {r.reference}",
                     f"{fmt(r.difference)} {TOO_FEW_MARK}" if too_few(getattr(r, "min_class_patients", None)) else
                     f"{fmt(r.difference)} [{fmt(r.ci_low)}, {fmt(r.ci_high)}]", fmt_p(r.p_value), fmt_p(r.p_holm)]
                    for r in delong.itertuples()]
            lines += ["AUROC of the binary targets, DeLong's test (images as independent; with several seeds the "
                      "seeds' spread added):", ""]
            lines += markdown_table(["Target", "Comparison", "AUROC difference (pp) [CI]", "p", "p Holm"], rows) + [""]
    if pairing_notes:
        lines += ["Not compared as paired:", ""] + [f"- {text}" for text in pairing_notes] + [""]
    return lines

DISCRETE = ("the interval ends at 0 while p is large: a percentile interval of one seed on a discrete metric "
            "(few test patients): many resamples give a difference of exactly 0, and they count on both sides of "
            "the p-value.")


def zero_edge(row, alpha):
    """A one-seed percentile interval with an end exactly at 0 next to a p-value above alpha: needs DISCRETE."""
    return (int(row.n_seeds) < 2 and pd.notna(row.p_value) and row.p_value >= alpha
            and (row.ci_low == 0 or row.ci_high == 0) and row.difference != 0)


def stability_section(convergence):
    if convergence.empty:
        return []
    lines = ["## Convergence and stability (learning curves)", ""]
    rows = [[target_title(r.target), r.arm, fmt_mean(r.best_val, r.best_val_sd),
             fmt_mean(r.epochs_to_threshold, r.epochs_to_threshold_sd, count=True) + (
                 f" ({int(r.never_reached)} never)" if pd.notna(r.never_reached) and r.never_reached else ""),
             fmt_mean(r.max_drop, r.max_drop_sd), fmt_mean(r.tail_sd, r.tail_sd_sd),
             fmt_mean(r.train_late_gain, r.train_late_gain_sd)]
            for r in convergence.itertuples()]
    lines += markdown_table(["Target", "Arm", "Best val (%)", "Val epochs to threshold", "Largest val drop (pp)",
                             "Val sd, last third (pp)", "Train gain, last third (pp)"], rows)
    n_seeds = int(convergence["n_seeds"].max())
    thresholds = "; ".join(f"{short_name(t)} {fmt(rows_t['threshold'].iloc[0])} % ({rows_t['threshold_arm'].iloc[0]})"
                           for t, rows_t in convergence.groupby("target", sort=False)
                           if pd.notna(rows_t["threshold"].iloc[0]))
    lines += ["", "Per run, then " + spread_words(n_seeds) + f". Threshold: {100 * THRESHOLD_SHARE:g} % of the best "
                  f"arm's last validation value, the same for every arm of a target ({thresholds or 'n/a'}); "
                  "\"never\" counts runs that do not reach it. Largest drop: the biggest fall between consecutive "
                  "epochs (the paper's \"ditches\"). Last third: the last ceil(n/3) epochs (sd needs 2); train gain: "
                  "what the training curve added over them (a curve still rising has not converged). The epochs to "
                  "95 % of each run's own best and the curve's mean height: tables/convergence.csv, per run "
                  "tables/runs.csv.", ""]
    return lines

def settings_section(run_args, targets=()):
    """Each setting as a list item: what the paper states (or 'not stated'), the kit's choice and why,
    this run's value; then the known limits of the targets' data."""
    lines = ["## Settings: the paper's and the kit's", ""]
    for name, paper, kit, because, key, paper_value in SETTINGS:
        if kit.startswith("recipe:"):  # what the runs recorded as they trained (kit/recipe.py), not a constant
            part = kit.split(":", 1)[1]
            trained = [(kind, args.get("recipe", {}).get(part)) for kind, args in run_args.items()
                       if isinstance(args.get("recipe"), dict)]
            ran = "; ".join(f"{recipe_words(part, value)} ({kind})" for kind, value in trained)
            lines.append(f"- **{name}** — paper: {paper or 'not stated'}; this study trained with "
                         f"{ran or 'no recorded recipe'}" + (f"; {because}" if because else "") + ".")
            continue
        flag = f"--{key.replace('_', '-')}" if key else ""
        values = sorted({str(args.get(key)) for args in run_args.values() if args.get(key) is not None}) if key else []
        this_run = "; ".join(f"{kind} {flag} {args[key]}" for kind, args in run_args.items()
                             if args.get(key) is not None) if len(values) > 1 else (f"{flag} {values[0]}" if values else "")
        if paper_value is not None and values and values != [str(paper_value)]:
            this_run += " (not the paper's)"
        said = f"paper: {paper}" if paper else "paper: not stated"
        lines.append(f"- **{name}** — {said}; kit: {kit}" + (f", because {because}" if because else "")
                     + (f"; this run: {this_run}" if this_run else "") + ".")
    lines += ["", "Nothing marked \"kit\" is the paper's setting, and \"the kit's inference\" marks what the kit "
                  "read into the paper's words; docs/settings.md explains each choice.", ""]
    limits = [f"- {LIMITS[t]}." for t in targets if t in LIMITS]
    if any(t in NO_PATIENT_IDS for t in targets):
        limits.append(f"- {LIMITS[None]}.")
    return lines + (["Known limits of the data:", ""] + limits + [""] if limits else [])

STRATEGY_WORDS = {"full": "full fine-tuning (every layer trains)",
                  "partial": "partial fine-tuning (the last dense block and the head train)",
                  "linear": "linear probe (the head alone trains; the backbone and its BatchNorm statistics frozen)"}


def strategies_section(outputs, reporting):
    """The strategies side by side: every target and arm's test value (claims checkpoint, mean [CI]) under
    each strategy, with links to each strategy's own report, Table 2 and forest plot.
    `outputs`: {strategy: (folder relative to OUT, its tables/table2.csv)}."""
    prefix = "test_last" if reporting.claims_checkpoint == "last" else "test"
    tables = {s: pd.read_csv(path) for s, (_, path) in outputs.items() if Path(path).is_file()}
    lines = ["## Fine-tuning strategies side by side", "",
             f"Test split, {'last-epoch' if reporting.claims_checkpoint == 'last' else 'best-validation'} checkpoint, mean "
             f"[{100 * reporting.ci:g} % CI] in %: the same targets, arms and seeds under each strategy.", ""]
    first = next(iter(tables.values()))
    rows = []
    for row in first[["target", "arm", "metric"]].itertuples(index=False):
        cells = []
        for table in tables.values():
            found = table[(table["target"] == row.target) & (table["arm"] == row.arm)]
            value = found.iloc[0] if len(found) else {}
            cells.append(fmt_mean(value.get(prefix, math.nan), low=value.get(f"{prefix}_ci_low", math.nan),
                                  high=value.get(f"{prefix}_ci_high", math.nan)))
        if any(cell != "n/a" for cell in cells):
            rows.append([target_title(row.target), row.arm, metric_label(row.metric), *cells])
    lines += markdown_table(["Target", "Arm", "Metric", *tables], rows) + [""]
    for strategy, (folder, _) in outputs.items():
        base = "" if str(folder) == "." else f"{folder}/"
        lines.append(f"- {strategy}: {STRATEGY_WORDS.get(strategy, strategy)}: [report]({base}report.md), "
                     f"[Table 2]({base}tables/table2.md), [forest plot]({base}figures/forest.png)")
    return "\n".join(lines + [""])


@dataclasses.dataclass(frozen=True)
class Reporting:
    """How the report's numbers were computed: the CI level, the bootstrap resamples and their seed, and the
    checkpoint (best | last) the answers and claims use."""
    ci: float
    bootstrap: int
    seed: int
    claims_checkpoint: str


@dataclasses.dataclass(frozen=True)
class Study:
    """Everything report.md says, computed by plot_results.py: tables (pandas frames), figures, verdicts, and
    what the study folder records (study.json, the runs' arguments and recipes, the overlap check)."""
    reporting: Reporting
    metrics: dict                    # target -> headline metric
    table2_md: str
    paired: object                   # tables/paired.csv rows at the claims checkpoint and largest fraction
    convergence: object
    summary: object
    sizes: dict
    settings: str                    # one line: runs, seeds, fractions, how test values are given
    figures: list                    # (file name, title)
    claims: object
    comparison: object
    rankings: object
    answers: dict
    record: dict | None              # study.json
    runs_arms: dict
    seeds: list
    sources: dict
    run_args: dict
    missing_reason: str | None = None
    pairing_notes: tuple = ()
    domains: dict | None = None
    strategy: str | None = None
    overlap: dict | None = None
    left_out: list = dataclasses.field(default_factory=list)  # evaluations not of the checkpoint in their run folder
    manifests: dict | None = None    # what the manifests' JSON says of the data: results.manifest_data


def left_out_section(left_out) -> list:
    """The evaluations no table uses: each was made of a checkpoint that is no longer the one in its run folder."""
    if not left_out:
        return []
    lines = ["## Evaluations left out", "",
             "Every test number here comes from the checkpoint now in its run folder. These evaluations are of "
             "another one, so no table or figure uses them; the run's test values are n/a until it is evaluated "
             "again (`evaluate.py`, or the workflow, which does it).", ""]
    return lines + [f"- {item['key']} ({item['kind']}.pt): {item['reason']}" for item in left_out] + [""]


def report_markdown(study: Study) -> str:
    """OUT/report.md: what was run, the answer per target, the claims, the paper's Table 2 next to this
    run, data, Table 2 with test CIs, all paired comparisons, convergence and stability, settings, figures."""
    s, reporting = study, study.reporting
    targets = list(s.metrics)
    lines = ["# Domain-aware transfer learning: study report", ""]
    lines += what_was_run(s.record, s.runs_arms, targets, s.seeds, s.settings, s.missing_reason,
                          reporting.claims_checkpoint, s.domains, s.strategy, s.manifests)
    lines += overlap_section(**s.overlap) if s.overlap else []
    lines += left_out_section(s.left_out)
    lines += ["## The answer, per target", "", "Does medical pretraining beat ImageNet? (test split, "
              f"{'last-epoch' if reporting.claims_checkpoint == 'last' else 'best-validation'} checkpoint, "
              f"{100 * reporting.ci:g} % CIs, Holm-corrected p; a best arm is named only when shown better than the "
              "next)", ""]
    lines += [f"- {s.answers[t]}" for t in targets if t in s.answers] + [""]
    lines += claims_section(s.claims, reporting.ci, reporting.bootstrap, s.paired)
    lines += paper_vs_run_section(s.comparison, s.rankings, reporting.ci, max(1, len(s.seeds)))
    lines += data_section(s.metrics, s.sizes, s.summary, s.sources)
    lines += [s.table2_md, ""]
    lines += paired_section(s.paired, reporting, s.pairing_notes)
    lines += stability_section(s.convergence)
    lines += settings_section(s.run_args, targets)
    lines += ["## Figures", ""]
    lines += [f"- [{title}](figures/{name})" for name, title in s.figures]
    lines += ["- Confusion matrices and per-class precision/recall/F1: "
              "`eval/<target>/<arm>/<run>/{best,last}/confusion.png`, `per_class.csv`", ""]
    lines += ["Tables: tables/table2.{csv,md}, tables/claims.csv, tables/paper_vs_run.csv, tables/rankings.csv, "
              "tables/test_summary.csv (every fraction and checkpoint), tables/paired.csv, tables/convergence.csv, "
              "tables/runs.csv (one row per run).", ""]
    return "\n".join(lines)
