"""Evaluation reports as tables for people (what `jmvae evaluate` prints on a terminal), and ready for JSON."""

import math

from rich import box
from rich.console import Console
from rich.table import Table


def finite(obj):
    """NaN and infinities (a standard error of one image) as null: JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def print_evaluation(report: dict, out: Console) -> None:
    """The report of jmvae_cli.quality and jmvae_cli.likelihood as tables: the parts it holds, one table each."""
    out.print(f"{report['weights']}: {report['images']} {report['split']} images", soft_wrap=True)
    names = report["attributes"]

    def scores_table(title: str, groups: list[tuple[str, dict, tuple[str, ...]]], caption: str) -> None:
        """One row per attribute, columns grouped as (group heading, summary, scores), the mean row last."""
        heads = {"accuracy": "acc", "balanced_accuracy": "bal", "f1": "F1"}
        table = Table(box=box.SIMPLE_HEAD, title=title, caption=caption, title_justify="left", caption_justify="left")
        # whole names, however narrow the terminal: cut, Wearing_Necklace and Wearing_Necktie read alike
        table.add_column("\nattribute", no_wrap=True, min_width=max(map(len, names), default=9))
        cells = []
        for heading, summ, keys in groups:
            for j, key in enumerate(keys):
                table.add_column(f"{heading if j == 0 else ''}\n{heads[key]}", justify="right")
                cells.append((summ, key))
        for n in names:
            table.add_row(n, *[f"{s['per_attribute'][n][k]:.3f}" for s, k in cells])
        table.add_section()
        table.add_row("[bold]mean", *[f"[bold]{s['mean'][k]:.3f}" for s, k in cells])
        out.print(table)

    every = ("accuracy", "balanced_accuracy", "f1")
    if "img2attr" in report:
        r = report["img2attr"]
        groups = [("q(z|x)", r["q_x"], every), ("q(z|x,0)", r["q_xw_zero"], every[:2]),
                  ("majority", r["majority"], every[:2])]  # fmt: skip
        scores_table(
            "img->attr",
            groups,
            "q(z|x,0): the joint encoder with w = 0; majority: each attribute's commoner value in training",
        )
    if "attr2img" in report:
        r = report["attr2img"]
        groups = [("coherence", r["coherence"], every), ("classifier", r["classifier_on_real"], every)]
        scores_table("attr->img", groups, "classifier: its own scores on the real faces, the ceiling of coherence")

    def pct(v) -> str:
        return "-" if v is None else f"{v:.1%}"

    if "edit" in report:
        e = report["edit"]
        strength = e["strength"] if isinstance(e["strength"], str) else f"{e['strength']:g}"
        table = Table("edit", "s", "faces", "before", "seen", "strict", "kept", "|Δ|", "left", box=box.SIMPLE_HEAD,
                      pad_edge=False, title=f"single-attribute edits ({e['method']} rule, strength {strength})",
                      title_justify="left",
                      caption="as the classifier sees the faces; only faces not labelled with the target are edited, "
                      "at strength s; before: the target seen before the edit; seen: after it; strict: seen after, of "
                      "the faces it was not seen on before; kept: the other attributes seen as before; |Δ|: mean "
                      "change per 8-bit pixel value; left: faces the model was sure showed the target already, "
                      "which the edit leaves as they were; the mean is over attributes",
                      caption_justify="left")  # fmt: skip
        for col in table.columns[1:]:
            col.justify = "right"
        table.columns[0].overflow = "fold"  # a long name on a narrow terminal: all of it, on two lines
        for r in e["edits"]:
            name = f"{'+' if r['target'] else '-'}{r['attribute']}" + (f" ({r['split']})" if "split" in r else "")
            delta = "-" if r["abs_delta"] is None else f"{r['abs_delta']:.1f}"
            table.add_row(name, f"{r['strength']:g}", str(r["faces"]), pct(r["target_before"]), pct(r["flipped"]),
                          pct(r["flipped_strict"]), pct(r["others_unchanged"]), delta, pct(r["unmade"]))  # fmt: skip
        m = e["mean"]
        delta = "-" if m["abs_delta"] is None else f"{m['abs_delta']:.1f}"
        table.add_section()
        table.add_row("[bold]mean", "", "", pct(m["target_before"]), pct(m["flipped"]), pct(m["flipped_strict"]),
                      pct(m["others_unchanged"]), delta, pct(m["unmade"]))  # fmt: skip
        out.print(table)
        if e.get("lowest"):
            low = e["attributes"][e["lowest"]]
            out.print(f"seen least: {e['lowest']}, {pct(low['flipped'])} (the mean of its directions)", highlight=False)
    if "likelihood" in report:
        table = Table("likelihood", "nats", "± se", "bits/dim", box=box.SIMPLE_HEAD, title="log-likelihoods",
                      title_justify="left")  # fmt: skip
        for col in table.columns[1:]:
            col.justify = "right"
        for key, v in report["likelihood"].items():
            se = "-" if v["nats_se"] is None else f"{v['nats_se']:.1f}"
            table.add_row(key, f"{v['nats']:.1f}", se, f"{v['bits_per_dim']:.4f}")
        out.print(table)
