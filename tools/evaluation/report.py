"""The Markdown tables of `grouplat evaluate`, from its JSON report: model and baseline side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.3g}%"


def markdown(report: dict) -> str:
    names = list(report["models"])
    budget = report["budget"]
    out = ["# grouplat evaluation" + (" (--quick: smoke test, not a measurement)" if budget["quick"] else "")]

    rows = []
    for key, label in (("path", "checkpoint"), ("train_schedule", "training schedule"),
                       ("generate_schedule", "generation schedule"), ("encode_schedule", "encode schedule"),
                       ("calibrated_knots", "calibrated knots"), ("hide", "hidden groups")):  # fmt: skip
        rows.append([label, *(report["models"][n].get(key, "-") for n in names)])
    rows.append(["groups", *(report["models"][n]["space"]["groups"] or "one" for n in names)])
    served = [report["models"][n].get("served_steps") for n in names]
    rows.append(
        ["served steps", *(f"decode {s['decode']}, encode {s['encode']}" if s else "-" for s in served)]
    )
    rows.append(["fingerprint", *(report["models"][n]["fingerprint"][:16] for n in names)])
    out += ["## Models", _table(["", *names], rows)]
    out.append(
        f"Held-out data: {report['data']['spec']}, seed {report['data']['seed']} "
        "(training used another seed). "
        f"Evaluated in {report['seconds']:.0f} s ({report['engine']['kind']} engine, "
        f"{report['engine']['device']}, {report['engine']['threads']} threads)."
    )

    nfe = [str(n) for n in budget["nfe"]]
    rows = []
    for n in names:
        for solver, values in report["round_trip"][n].items():
            rows.append([n, solver, "round trip", *(values.get(k) for k in nfe)])
        for solver, values in report["one_way"][n].items():
            if solver != "reference":
                rows.append([n, solver, "one-way", *(values.get(k) for k in nfe)])
    out += [
        "## Reconstruction PSNR (dB) vs NFE",
        f"Round trip: encode → decode of {budget['images']} held-out images at that NFE each way. One-way: "
        f"decode of {budget['images']} fixed N(0, I) latents vs a reference decode "
        f"({report['one_way'][names[0]]['reference']}); round trip flatters a solver (docs/design.md §1).",
        _table(["model", "solver", "measure", *(f"{k} NFE" for k in nfe)], rows),
    ]

    rows = []
    for j, moved in report["leakage"][names[0]].items():
        for i in moved:
            rows.append([j, i, *(_pct(report["leakage"][n].get(j, {}).get(i)) for n in names)])
    out += [
        "## Group leakage",
        f"Resample group Sj of {budget['images']} held-out latents, "
        f"decode ({budget['solver']}, {_cost(budget['decode_nfe'])}): "
        "RMS change of each coarser group Si's coefficients ÷ RMS change of Sj's. The baseline is probed "
        "on the same coefficient index sets. docs/design.md §1: coarser groups should not move.",
        _table(["perturbed", "coarser group", *names], rows),
    ]

    stats = report["latent_statistics"]
    rows = []
    for g, group in enumerate(stats[names[0]]["groups"]):
        rows.append([group["group"], *(_stat(stats[n]["groups"][g]) for n in names)])
    rows.append(["S1 max abs corr", *(stats[n]["s1_max_abs_corr"] for n in names)])
    null = stats[names[0]]["s1_null_max_abs_corr"]
    out += [
        "## Latent statistics",
        f"{stats[names[0]]['count']} held-out images encoded ({budget['solver']}, "
        f"{_cost(budget['encode_nfe'])}). Per group: "
        f"mean |mean| of its elements; std mean (min–max). Remark 2.1 expects N(0, I). The largest |corr| "
        f"among the {report['s1_numbers']} S1 numbers of N(0, I) samples of the same size is {null:.3g} "
        "(the sampling-noise floor).",
        _table(["group", *names], rows),
    ]
    own = report["sample_latent_statistics"]
    rows = [["S1", *(_stat(own[n]["groups"][0]) for n in names)]]
    rows.append(["S1 max abs corr", *(own[n]["s1_max_abs_corr"] for n in names)])
    spread = report["s1_spread"]
    bands = [
        [f"{b['directions'][0]}–{b['directions'][1] - 1}", b["images"],
         *(v for n in names for v in (spread[n][i]["samples"], spread[n][i]["latents"]))]
        for i, b in enumerate(spread[names[0]])
    ]  # fmt: skip
    out += [
        f"The model's own samples: {own[names[0]]['count']} N(0, I) latents decoded ({budget['solver']}, "
        f"{_cost(budget['decode_nfe'])}) and encoded again: on the model's own distribution Remark 2.1's "
        "N(0, I) must hold up to solver error, whatever the model has learned. Max |corr| floor at "
        f"this size: {own[names[0]]['s1_null_max_abs_corr']:.3g}.",
        _table(["group", *names], rows),
        "Where held-out latents miss it: the held-out images' standardized S1 coefficients "
        "((x̄ − μ) / σ, the grouped model's μ, σ) along their principal directions, widest first, in "
        "bands; mean std of the images, of each model's samples, and of the images' latents. Samples "
        "wider than the images along a band put the images in the middle of the model's spread: "
        "their latents come out narrower than 1 there. Latents narrower than 1 where the samples are "
        "no wider than the images say that the model is wider than the data locally, across the "
        "surface that S1's few factors make, not overall.",
        _table(["directions", "images", *(f"{n} {w}" for n in names for w in ("samples", "latents"))], bands),
    ]

    dis = report["disentanglement"]
    columns = [*names, "dct"]
    rows = [
        ["MIG", *(dis[c]["mig"]["score"] for c in columns)],
        ["DCI disentanglement", *(dis[c]["dci"]["disentanglement"] for c in columns)],
        ["DCI completeness", *(dis[c]["dci"]["completeness"] for c in columns)],
        ["DCI informativeness", *(dis[c]["dci"]["informativeness"] for c in columns)],
        ["SAP", *(dis[c]["sap"]["score"] for c in columns)],
    ]
    for k, factor in enumerate(report["factors"]):
        rows.append([f"MIG: {factor}", *(dis[c]["mig"]["per_factor"][k] for c in columns)])
    out += [
        "## Disentanglement of the S1 latents",
        f"Codes: the first {report['s1_numbers'] // 3} coefficients per channel "
        f"({report['s1_numbers']} numbers) "
        "of each latent — the grouped model's S1, and the same coefficients of the baseline's latent "
        "(like for like); `dct` is those coefficients of the image itself (no model). Factors: "
        + ", ".join(report["factors"])
        + " (shape categorical; rotation is meaningless for circles).",
        _table(["metric", *columns], rows),
    ]

    keep = [str(m) for m in report["keep"]]
    size = report["keep"][-1]
    rows = [
        [f"{m} ({100 * int(m) / size:.3g}%)", *(report["keep_first"][c][m] for c in columns)] for m in keep
    ]
    out += [
        "## Reconstruction from the first m coefficients (Fig. 5), PSNR (dB)",
        f"Latent: keep the first m per channel, the rest 0, decode ({budget['solver']}, "
        f"{_cost(budget['decode_nfe'])}); "
        "`dct`: plain truncation of the image's coefficients (the rest at the data mean). "
        "m = all is the round trip at these settings.",
        _table(["m per channel", *columns], rows),
    ]

    t1 = report["table1"]
    real = t1["real"]
    rows = [[r["model"], r["train"], r["generate"], r["swd"], r.get("confidence"), r.get("kind_score")]
            for r in t1["rows"]]  # fmt: skip
    rows.append(["real data", "–", "–", real["swd"], real.get("confidence"), real.get("kind_score")])
    out += [
        "## Table 1 (small): training × generation schedule",
        f"{t1['samples']} samples per cell from the same N(0, I) latents ({t1['solver']}, {t1['nfe']} NFE), "
        "against as many held-out real images. SWD: sliced Wasserstein distance of 8×8 block-mean pixels "
        "(standardized), lower is better; `real data` is other real images (the floor at this sample size). "
        f"Shape classifier (held-out accuracy {t1['classifier_accuracy']:.3f}): mean confidence, and the "
        "kind score exp(E KL(p(y|x) ‖ p(y))), 4 at best. The generation schedule only splits the steps "
        "among the groups (the network sees levels, not t), so it matters at low NFE alone; the training "
        "axis needs one checkpoint per training schedule (--table1).",
        _table(["model", "training", "generation", "SWD ↓", "confidence ↑", "kind score ↑"], rows),
    ]
    return "\n\n".join(out) + "\n"


def _stat(group: dict) -> str:
    return f"{group['abs_mean']:.3f}; {group['std_mean']:.3f} ({group['std_min']:.2f}–{group['std_max']:.2f})"


def _cost(nfe: int | None) -> str:
    """A solve's cost as the budget gives it: NFE, or each model's served default steps."""
    return "each model's served default steps" if nfe is None else f"{nfe} NFE"
