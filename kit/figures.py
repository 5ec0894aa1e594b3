"""The study's figures: learning curves per target and for all targets (paper Figs. 3-4), the
forest plot of paired differences, and label efficiency. Each arm keeps one colour and marker in
every figure. matplotlib is imported inside each function (Agg backend set by the caller).
"""
import math
import textwrap

import numpy as np

from .files import save_figure
from .report import DISCRETE, TOO_FEW, fmt_p, zero_edge
from .paper import (ARMS, CURVE_SPLITS, arm_legend_label, fraction_label, metric_label, metric_name, paper_sorted,
                    target_title)

# Fixed colour and marker per arm, so an arm looks the same in every figure.
ARM_STYLES = {
    "RI": ("tab:gray", "x"),
    "IN": ("tab:blue", "o"),
    "Domain_RI": ("tab:orange", "s"),
    "Domain_IN": ("tab:green", "^"),
    "All_RI": ("tab:red", "D"),
    "All_IN": ("tab:purple", "v"),
}
EXTRA_STYLES = [("tab:brown", "P"), ("tab:pink", "X"), ("tab:olive", "*"), ("tab:cyan", "h"), ("tab:gray", "<")]


def arm_style(arm, extra_arms):
    if arm in ARM_STYLES:
        return ARM_STYLES[arm]
    return EXTRA_STYLES[extra_arms.index(arm) % len(EXTRA_STYLES)]


def plot_panel(ax, runs, split, column, scale, styles, labels):
    """One training or validation panel: seed-mean `column` (value or loss) x scale vs epoch, one
    line per arm, a +-1 sd band where there are several seeds."""
    from matplotlib.ticker import MaxNLocator

    for arm, curves in runs.items():
        rows = curves[curves["split"] == split]
        if rows.empty:
            continue
        colour, marker = styles[arm]
        ax.plot(rows["epoch"], rows[column] * scale, color=colour, marker=marker, markersize=5,
                linewidth=1.6, markevery=max(1, len(rows) // 12), label=labels[arm])
        sd = rows[f"{column}_sd"] * scale
        if sd.notna().any():
            ax.fill_between(rows["epoch"], rows[column] * scale - sd, rows[column] * scale + sd, color=colour,
                            alpha=0.18, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Epoch")
    ax.grid(True, alpha=0.35)


def legend_handles(arms, styles, labels):
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=styles[a][0], marker=styles[a][1], markersize=5, linewidth=1.6, label=labels[a])
            for a in arms]


def seeds_note(n_seeds):
    return f" (mean of {n_seeds} seeds, band ±1 sd)" if n_seeds > 1 else ""


def plot_target(target, runs, metric, column, out_path, dpi, extra_arms, n_seeds):
    """Paper Figs. 3-4 for one target: training | validation panels, the arms overlaid, on one y-range
    (the gap between training and validation reads at a glance). Returns the (closed) figure."""
    import matplotlib.pyplot as plt

    styles = {arm: arm_style(arm, extra_arms) for arm in runs}
    labels = {arm: arm_legend_label(target, arm) for arm in runs}
    is_loss = column == "loss"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained", sharey=True)
    for ax, (split, split_name) in zip(axes, CURVE_SPLITS):
        plot_panel(ax, runs, split, column, 1.0 if is_loss else 100.0, styles, labels)
        ax.set_title(split_name)
    axes[0].set_ylabel("Loss" if is_loss else f"{metric_label(metric)} (%)")
    fig.suptitle(f"{target_title(target)} — {'loss' if is_loss else metric_name(metric)}{seeds_note(n_seeds)}",
                 fontsize=13)
    # One shared legend below the panels: it never hides a curve.
    fig.legend(handles=legend_handles(list(runs), styles, labels), loc="outside lower center",
               ncol=min(len(runs), 5), frameon=False)
    save_figure(fig, out_path, dpi)
    return fig


def plot_overview(all_runs, metrics, out_path, dpi, extra_arms, n_seeds):
    """All targets in one grid (rows = targets, cols = training | validation), the paper-style overview;
    the two panels of a target share their y-range. Returns the (closed) figure."""
    import matplotlib.pyplot as plt

    arms = paper_sorted({a for runs in all_runs.values() for a in runs}, ARMS)
    styles = {arm: arm_style(arm, extra_arms) for arm in arms}
    labels = {arm: arm for arm in arms}
    fig, axes = plt.subplots(len(all_runs), 2, figsize=(11, 1.2 + 3.0 * len(all_runs)),
                             layout="constrained", squeeze=False, sharey="row")
    for row, (target, runs) in enumerate(all_runs.items()):
        for ax, (split, split_name) in zip(axes[row], CURVE_SPLITS):
            plot_panel(ax, runs, split, "value", 100.0, styles, labels)
            ax.set_title(f"{target_title(target)} — {split_name.lower()}", fontsize=11)
        axes[row, 0].set_ylabel(f"{metric_label(metrics[target])} (%)")
    if n_seeds > 1:
        fig.suptitle(f"Learning curves{seeds_note(n_seeds)}", fontsize=12)
    fig.legend(handles=legend_handles(arms, styles, labels), loc="outside upper center",
               ncol=min(len(arms), 5), frameon=False)
    save_figure(fig, out_path, dpi)
    return fig


def plot_forest(paired, out_path, dpi, extra_arms, ci):
    """Arm - reference differences of the headline metric (test, one checkpoint) with CIs, a panel per
    target, every panel on the same x-scale and with its own x-label. A difference without an interval
    (too few test patients) is a bare point; a one-seed percentile interval ending at 0 next to a large
    p is marked † and the footnote says why (report.DISCRETE)."""
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(paired["target"]))
    heights = [1.3 + 0.32 * (paired["target"] == t).sum() for t in targets]
    ends = np.concatenate([paired[c].to_numpy(dtype=np.float64) for c in ("ci_low", "ci_high", "difference")] + [[0.0]])
    ends = ends[np.isfinite(ends)]
    pad = max(1.0, 0.05 * (ends.max() - ends.min()))
    x_range = (ends.min() - pad, ends.max() + pad)
    kind = {"last": "last-epoch", "best": "best-validation"}.get(str(paired["checkpoint"].iloc[0]), "")
    one_seed = (paired["n_seeds"] < 2).all() if "n_seeds" in paired else True
    how = "percentile bootstrap over patients, one seed" if one_seed else "seeds' spread + patient bootstrap"
    x_label = f"Difference on the test split (percentage points), {kind} checkpoint, {100 * ci:g} % CI ({how})"
    marked = False
    fig, axes = plt.subplots(len(targets), 1, figsize=(8.5, sum(heights) + 0.9), layout="constrained",
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, target in zip(axes[:, 0], targets):
        rows = paired[paired["target"] == target].iloc[::-1]
        y = np.arange(len(rows))
        for yi, row in zip(y, rows.itertuples()):
            colour, marker = arm_style(row.arm, extra_arms)
            if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
                # a percentile interval need not contain the point estimate: clip, never a negative bar
                xerr = [[max(0.0, row.difference - row.ci_low)], [max(0.0, row.ci_high - row.difference)]]
            else:
                xerr = None
            ax.errorbar(row.difference, yi, xerr=xerr, color=colour, marker=marker, markersize=6, capsize=3,
                        linewidth=1.5)
            if xerr is None:
                text = TOO_FEW
            else:
                texts = [fmt_p(row.p_value), fmt_p(getattr(row, "p_holm", None))]
                p_text, holm = (t if t.startswith("<") else f"= {t}" for t in texts)
                text = f"p {p_text}, Holm {holm}"
                if zero_edge(row, 1 - ci):
                    text, marked = text + " †", True
            ax.annotate(text, (1.01, yi), xycoords=("axes fraction", "data"), va="center", fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{r.arm} − {r.reference}" for r in rows.itertuples()], fontsize=9)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(*x_range)  # one scale for every panel: differences compare across targets
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_title(f"{target_title(target)} — {metric_label(rows['metric'].iloc[0])}", fontsize=10, loc="left")
        ax.grid(True, axis="x", alpha=0.35)
    if marked:
        fig.supxlabel(textwrap.fill(f"† {DISCRETE}", 140), fontsize=7)  # laid out below the panels
    save_figure(fig, out_path, dpi)


def plot_label_efficiency(summary, metrics, out_path, dpi, extra_arms):
    """Test metric (best checkpoint, seed-mean, CI bars) against the train fraction, per arm, for the targets
    run at several fractions: where transfer should matter most."""
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(summary["target"]))
    ncols = min(3, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.5), layout="constrained",
                             squeeze=False)
    arms = paper_sorted(set(summary["arm"]), ARMS)
    for ax, target in zip(axes.flat, targets):
        rows = summary[summary["target"] == target]
        for i, (arm, points) in enumerate(rows.groupby("arm", sort=False)):
            points = points.sort_values("train_fraction")
            colour, marker = arm_style(arm, extra_arms)
            dodge = 10 ** (0.015 * (i - (rows["arm"].nunique() - 1) / 2))  # side by side on the log axis
            ax.errorbar(points["train_fraction"] * dodge, points["test"],
                        yerr=[(points["test"] - points["ci_low"]).clip(lower=0),
                              (points["ci_high"] - points["test"]).clip(lower=0)],
                        color=colour, marker=marker, markersize=5, capsize=3, linewidth=1.4, label=arm)
        fractions = sorted(set(rows["train_fraction"]))
        ax.set_xscale("log")
        ax.set_xticks(fractions, [fraction_label(f) for f in fractions])
        ax.minorticks_off()
        ax.set_title(target_title(target), fontsize=10)
        ax.set_xlabel("Fraction of the train split")
        ax.set_ylabel(f"Test {metric_label(metrics[target]).lower()} (%)")
        ax.grid(True, alpha=0.35)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    styles = {arm: arm_style(arm, extra_arms) for arm in arms}
    fig.legend(handles=legend_handles(arms, styles, {a: a for a in arms}), loc="outside upper center",
               ncol=min(len(arms), 5), frameon=False)
    save_figure(fig, out_path, dpi)
