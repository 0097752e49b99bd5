"""A test-set evaluation as one self-contained HTML file: accuracy with its confidence interval,
per-class metrics, confusion matrix, calibration, training curves and the misclassified digits.

Everything is inside the file (figures as base64 PNG data URIs, inline CSS, no scripts), so it
can be mailed, attached to a release or opened offline.
"""

from __future__ import annotations

import base64
import html
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__, plots
from .evaluate import Calibration, Evaluation, calibration
from .files import write_atomic
from .model import NUM_CLASSES

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

Z_95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval
GALLERY_LIMIT = 100  # misclassified digits drawn, most confident first
TOP_CONFUSIONS = 5  # (true, predicted) pairs listed under the confusion matrix
IMAGE_SHAPE = (28, 28)


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike p ± z·SE it never leaves [0, 1] and keeps its coverage near 100%, where accuracies live.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes} of {trials}")
    p = successes / trials
    z2_n = z * z / trials
    centre = (p + z2_n / 2) / (1 + z2_n)
    half_width = z / (1 + z2_n) * math.sqrt(p * (1 - p) / trials + z2_n / (4 * trials))
    # At 0 or `trials` successes the bound is exactly 0 or 1; rounding would leave 1e-17 or 1 - 1e-16.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high


def format_accuracy(evaluation: Evaluation) -> str:
    """'99.55% (45 errors of 10,000), 95% CI 99.40-99.66%'."""
    low, high = wilson_interval(evaluation.count - evaluation.errors, evaluation.count)
    return (
        f"{evaluation.accuracy:.2%} ({evaluation.errors:,} errors of {evaluation.count:,}), "
        f"95% CI {100 * low:.2f}-{100 * high:.2f}%"
    )


def model_details(
    loaded: LoadedModel, evaluation: Evaluation, test_directory: Path, tta: bool = False
) -> dict[str, str]:
    """The rows of the table under a report's title: the model file, its networks, recipes and
    training date (an ensemble's first member's), test-time augmentation and the test set."""
    from .ensemble import TTA_VIEWS

    members = loaded.members_metadata
    recipes = dict.fromkeys(str((m.get("train_config") or {}).get("recipe", "unknown")) for m in members)
    return {
        "model": str(loaded.path),
        "networks": f"{len(members)} (probabilities averaged)" if len(members) > 1 else "1",
        "test-time augmentation": f"yes ({len(TTA_VIEWS)} views)" if tta else "no",
        "recipe": ", ".join(recipes),
        "trained": str((members[0].get("environment") or {}).get("date", "unknown")),
        "test set": f"{test_directory} ({evaluation.count:,} images)",
    }


def write_report(
    evaluation: Evaluation,
    images: np.ndarray,
    path: Path,
    *,
    title: str,
    histories: Sequence[Sequence[dict]] = (),
    details: Mapping[str, str] = {},
) -> Path:
    """Write the HTML report of `evaluation` on `images` (N, 28, 28), in the same order, to `path`.

    `histories` holds one training history (per-epoch dicts) per ensemble member; `details` are
    rows for the table under the title (model file, members, date, ...).
    """
    images = np.asarray(images)
    if images.shape != (evaluation.count, *IMAGE_SHAPE) or len(evaluation.labels) != evaluation.count:
        raise ValueError(
            f"the images ({images.shape}) and labels ({len(evaluation.labels)}) must be the "
            f"{evaluation.count:,} evaluated test images, shape (N, 28, 28), in evaluation order"
        )
    bins = calibration(evaluation.confidences, evaluation.correct)
    sections = [
        _details_table(details),
        _accuracy_section(evaluation, bins),
        _per_class_section(evaluation),
        _confusion_section(evaluation),
        _calibration_section(evaluation, bins),
        _training_section(histories),
        _misclassified_section(evaluation, images),
    ]
    page = _PAGE.format(
        title=_e(title), css=_CSS, body="\n".join(s for s in sections if s), version=_e(__version__)
    )
    path = Path(path)
    write_atomic(path, page.encode("utf-8"))
    return path


# --- sections -----------------------------------------------------------------------------------


def _details_table(details: Mapping[str, str]) -> str:
    if not details:
        return ""
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in details.items())
    return f'<table class="details">{rows}</table>'


def _accuracy_section(evaluation: Evaluation, bins: Calibration) -> str:
    low, high = wilson_interval(evaluation.count - evaluation.errors, evaluation.count)
    cards = [
        (f"{evaluation.accuracy:.2%}", "accuracy"),
        (f"{evaluation.errors:,}", f"errors of {evaluation.count:,}"),
        (f"{100 * low:.2f}-{100 * high:.2f}%", "95% confidence interval"),
        (f"{evaluation.loss:.4f}", "mean loss"),
        (f"{bins.ece:.2%}", "calibration error (ECE)"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="value">{_e(value)}</div><div class="label">{_e(label)}</div></div>'
        for value, label in cards
    )
    return f"""<section id="accuracy">
<h2>Test accuracy</h2>
<div class="cards">{card_html}</div>
<p class="headline">{_e(format_accuracy(evaluation))}</p>
<p class="note">The interval is the Wilson score interval: where the accuracy on digits drawn like
these {evaluation.count:,} lies, with 95% confidence. The loss is the mean cross-entropy per image
(nats).</p>
</section>"""


def _per_class_section(evaluation: Evaluation) -> str:
    confusion = np.asarray(evaluation.confusion)
    rows = "".join(
        f"<tr><td>{c.digit}</td><td>{c.precision:.2%}</td><td>{c.recall:.2%}</td><td>{c.f1:.2%}</td>"
        f"<td>{c.support:,}</td><td>{c.support - int(confusion[c.digit, c.digit]):,}</td></tr>"
        for c in evaluation.per_class
    )
    return f"""<section id="per-class">
<h2>Per digit</h2>
<div class="scroll"><table class="numbers">
<thead><tr><th>digit</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>missed</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
<p class="note">Precision: of the images predicted as the digit, the share that are it. Recall: of
the images of the digit, the share found. Missed: images of the digit predicted as another.</p>
</section>"""


def _confusion_section(evaluation: Evaluation) -> str:
    confusion = np.asarray(evaluation.confusion)
    off_diagonal = confusion * (1 - np.eye(NUM_CLASSES, dtype=confusion.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:TOP_CONFUSIONS]
    pairs = [divmod(int(i), NUM_CLASSES) for i in order if off_diagonal.flat[i]]
    items = "".join(
        f"<li>{true} taken for {predicted}: {int(confusion[true, predicted]):,}</li>"
        for true, predicted in pairs
    )
    common = f"<p>Most frequent confusions:</p><ul>{items}</ul>" if pairs else ""
    figure = _img(
        plots.png_bytes(plots.confusion_figure(evaluation)),
        "Confusion matrix: true digit in rows, predicted digit in columns, counts on a log colour scale",
    )
    return f"""<section id="confusion">
<h2>Confusion matrix</h2>
<figure>{figure}<figcaption>Rows: true digit; columns: predicted digit. The colour scale is
logarithmic so that the few errors show beside the diagonal.</figcaption></figure>
{common}
</section>"""


def _calibration_section(evaluation: Evaluation, bins: Calibration) -> str:
    mean_confidence = float(np.mean(evaluation.confidences))
    if mean_confidence > evaluation.accuracy:
        leaning = "on the whole over-confident"
    elif mean_confidence < evaluation.accuracy:
        leaning = "on the whole under-confident"
    else:
        leaning = "equal on the whole"
    figure = _img(
        plots.png_bytes(plots.reliability_figure(bins)),
        f"Reliability diagram: accuracy against confidence in {len(bins.counts)} bins, "
        f"expected calibration error {bins.ece:.2%}",
    )
    rows = "".join(
        f"<tr><td>{low:.3f}-{high:.3f}</td><td>{n:,}</td><td>{acc:.2%}</td><td>{conf:.2%}</td></tr>"
        for low, high, n, acc, conf in zip(
            bins.edges[:-1], bins.edges[1:], bins.counts, bins.accuracy, bins.confidence, strict=True
        )
        if n
    )
    return f"""<section id="calibration">
<h2>Calibration</h2>
<p>Expected calibration error (ECE): <strong>{bins.ece:.2%}</strong>. Mean confidence
{mean_confidence:.2%} against accuracy {evaluation.accuracy:.2%}: {leaning}.</p>
<figure>{figure}<figcaption>Predictions grouped into {len(bins.counts)} equal-width bins by the
probability of the predicted digit; bars show each bin's accuracy, the hatched part its gap to the
bin's mean confidence, and the lower panel how many images fall in each bin. ECE is the
count-weighted mean of those gaps; 0 means the confidences can be read as the chance of being
right.</figcaption></figure>
<details><summary>Numbers per bin</summary>
<div class="scroll"><table class="numbers">
<thead><tr><th>confidence</th><th>images</th><th>accuracy</th><th>mean confidence</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
</details>
</section>"""


def _training_section(histories: Sequence[Sequence[dict]]) -> str:
    if not any(histories):
        return """<section id="training">
<h2>Training curves</h2>
<p class="note">No training history is recorded for this model.</p>
</section>"""
    rows = []
    for member, history in enumerate(histories, start=1):
        if not history:
            rows.append(f'<tr><td>{member}</td><td colspan="4">no history recorded</td></tr>')
            continue
        best = max(history, key=lambda h: h["val_accuracy"] or 0.0)
        seconds = [h["seconds"] for h in history if "seconds" in h]
        minutes = f"{sum(seconds) / 60:.1f} min" if len(seconds) == len(history) else "–"
        if best["val_accuracy"] is None:  # a final fit on every training image: the last epoch is kept
            validation, kept = "none (trained on every image)", f"{history[-1]['epoch']} (the last)"
        else:
            validation, kept = f"{best['val_accuracy']:.2%}", str(best["epoch"])
        rows.append(
            f"<tr><td>{member}</td><td>{len(history)}</td><td>{_e(validation)}</td>"
            f"<td>{_e(kept)}</td><td>{_e(minutes)}</td></tr>"
        )
    figure = _img(
        plots.png_bytes(plots.curves_figure(histories)),
        "Training curves: loss, accuracy and learning rate per epoch",
    )
    return f"""<section id="training">
<h2>Training curves</h2>
<figure>{figure}<figcaption>Loss (log scale), accuracy and learning rate per epoch, on the
training images (with augmentation) and the held-out validation images.</figcaption></figure>
<div class="scroll"><table class="numbers">
<thead><tr><th>member</th><th>epochs</th><th>best validation accuracy</th><th>at epoch</th>
<th>training time</th></tr></thead>
<tbody>{"".join(rows)}</tbody>
</table></div>
</section>"""


def _misclassified_section(evaluation: Evaluation, images: np.ndarray) -> str:
    if not evaluation.errors:
        body = '<p class="note">No test digit is misclassified.</p>'
    else:
        shown = min(evaluation.errors, GALLERY_LIMIT)
        which = (
            f"All {shown:,} misclassified digits, most confident first"
            if shown == evaluation.errors
            else f"The {shown:,} most confident of {evaluation.errors:,} misclassified digits"
        )
        gallery = plots.misclassified_figure(evaluation, images, evaluation.labels, GALLERY_LIMIT)
        figure = _img(plots.png_bytes(gallery), which)
        body = (
            f"<figure>{figure}<figcaption>{which}; each is labelled with its index in the test set, "
            "true → predicted digit, and the confidence of the prediction.</figcaption></figure>"
        )
    return f"""<section id="misclassified">
<h2>Misclassified digits</h2>
{body}
</section>"""


# --- HTML ---------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    # The size from the PNG header (IHDR) lets the browser lay the page out before decoding.
    width, height = struct.unpack(">II", png[16:24])
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}" width="{width}" height="{height}">'


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
<h1>{title}</h1>
{body}
<footer>Written by mnist-digits {version}.</footer>
</main>
</body>
</html>
"""

_CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 62rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.6rem; line-height: 1.25; margin: 0 0 1rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2.5rem 0 .75rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
p { margin: .6rem 0; }
.note, figcaption, footer { color: var(--muted); font-size: .9rem; }
.headline { font-size: 1.1rem; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(10.5rem, 1fr)); gap: .6rem; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; }
.card .value { font-size: 1.45rem; font-weight: 600; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.card .label { color: var(--muted); font-size: .85rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .3rem .8rem; border-bottom: 1px solid var(--line); vertical-align: top; }
table.numbers td, table.numbers th { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td:first-child, table.numbers th:first-child { text-align: left; }
table.numbers thead th { border-bottom: 2px solid var(--ink); white-space: nowrap; }
table.details th { text-align: left; font-weight: 600; color: var(--muted); white-space: nowrap; }
table.details td { overflow-wrap: anywhere; }
figure { margin: 1rem 0; }
img { display: block; max-width: 100%; height: auto; margin: 0 auto .4rem; }
details { margin: .6rem 0; }
summary { cursor: pointer; color: var(--muted); }
ul { margin: .3rem 0; padding-left: 1.4rem; }
footer { margin-top: 3rem; padding-top: .6rem; border-top: 1px solid var(--line); }
@media (max-width: 40rem) {
  body { font-size: 15px; }
  main { padding: 1rem .75rem 2rem; }
  th, td { padding: .25rem .45rem; }
  .card .value { font-size: 1.2rem; }
}
"""
