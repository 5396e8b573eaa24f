"""``model/README.md``: the model card, written from the run's metrics, saying what the folder is and is not."""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]


def _figures_table(verdict: dict[str, Any]) -> list[str]:
    names = [n for n in ("new", "current", "raw") if n in verdict]
    lines = ["| what a labeler sees in refinery's search | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for key, label, unit in (("same_class", "same class over a session", "%"),
                             ("first_screen_same", "first screen: same class of 9", ""),
                             ("lt_10", "searches with fewer than 10 results", "%")):
        lines.append(f"| {label} | " + " | ".join(f"{verdict[n][key]:.1f}{unit}" for n in names) + " |")
    return lines


def _verdict_lines(verdict: dict[str, Any] | None) -> list[str]:
    if not verdict:
        return ["No verdict was made for this run."]
    lines = [f"**{verdict.get('verdict', '?')}**: {verdict.get('conclusion', '')}", ""]
    if "new" in verdict:
        judged = ("the written vectors" if verdict.get("door") != "model"
                  else "this folder as refinery's embedder computes it (PCA-64)")
        lines += _figures_table(verdict) + [
            "",
            f"`new` is {judged}, from a second fit with {verdict.get('n_heldout', 0)} labels held out "
            f"({verdict.get('procedure', '')}); the judges are those held-out labels and "
            f"{verdict.get('n_unseen_weak', 0)} weak labels no fit sees. `raw` is refinery's stock embedding of "
            "the base model; `current` the project's embedding in the snapshot, when it carried one.",
        ]
    return lines


def model_card(metrics: dict[str, Any], *, fine_tuned: bool, share: float | None) -> str:
    """The card's Markdown for a run's ``metrics`` (``metrics.json``); ``fine_tuned``: full mode (the encoder
    was trained); ``share``: head mode's base share in the folder's map (None in head mode: the folder gives
    refinery's stock embedding, :mod:`kern_finetune.vectors.base_share`)."""
    config = metrics.get("config") or {}
    counts = metrics.get("train_class_counts") or {}
    val = metrics.get("val_class_counts") or {}
    classes = ", ".join(f"{name} ({counts.get(name, 0) + val.get(name, 0)})" for name in counts)
    weak = (f"manual labels, plus weak-supervision labels with confidence above {config.get('threshold')}"
            if config.get("weak_labels", True) else "manual labels only")
    if fine_tuned:
        what = "the base model's encoder fine-tuned on the labels (full mode), then normalised"
    elif share is None:
        what = ("the base model (unchanged), normalised: refinery's stock embedding; the trained head was dropped "
                "because no base share that keeps the search lists full beat the stock embedding's first screen on "
                "the held-out labels (`3_Dense` is the identity)")
    else:
        what = (f"the base model (unchanged) followed by one affine map, a trained head beside a share of "
                f"{share:g} of the base vector, then normalised (head mode; `3_Dense`)")
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, refinery, kern-finetune]", "---", "",
        f"# {metrics.get('embedding_name', 'kern-finetune embedding')}", "",
        f"Written by kern-finetune for a refinery labeling project: records that share a class of task "
        f"**{metrics.get('task')}** sit closer together, so refinery's similarity search returns more of them.", "",
        "## What it is", "",
        f"- base model: `{metrics.get('base_model') or config.get('base_model')}`",
        f"- task: {metrics.get('task')}; classes (labels trained on): {classes}",
        f"- labels used: {weak}; {metrics.get('n_manual', '?')} manual; text from "
        f"{', '.join(metrics.get('text_attributes') or [])}",
        f"- what the folder computes: {what}",
        f"- label fingerprint: `{metrics.get('label_fingerprint')}`", "",
        "## Which door it is for", "",
        "This folder is for the **model door**: refinery's embedder loads it as a Hugging Face model "
        "(sentence-transformers 2.2.2 and 3.0.1 load it), computes every record's vector and, for projects of 64 "
        "records or more, reduces it to 64 dimensions by PCA before search (docs/model-door.md).", "",
        "It does **not** reproduce the vectors this run writes into a snapshot (`vectors.npz`): those "
        "are smoothed over each record's base-model neighbours and spread so that refinery's search threshold "
        "returns full lists, which depends on the project's other records and cannot live in a model.", "",
        "## Did it help? (the verdict, no gold needed)", "", *_verdict_lines(metrics.get("verdict")), "",
    ]
    return "\n".join(lines)
