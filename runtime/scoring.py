"""WAR, UAR, per-class recall and the confusion matrix of video-level predictions, and the report.

WAR (weighted average recall) is the accuracy over all videos; UAR (unweighted average recall)
the mean recall over the classes present in the truth, as scikit-learn's
balanced_accuracy_score computes it. The official scripts report both (IFDD via torchmetrics'
micro precision and macro recall, S4D via its own confusion matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Scores:
    """confusion[t, p]: videos of true class t predicted as p, classes in ``labels`` order."""

    labels: tuple[str, ...]
    confusion: np.ndarray

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def videos(self) -> int:
        return int(self.confusion.sum())

    @property
    def war(self) -> float:
        return float(np.trace(self.confusion) / self.videos) if self.videos else float("nan")

    @property
    def recall(self) -> dict[str, float]:
        """Recall of each class present in the truth."""
        hits, support = np.diag(self.confusion), self.support
        return {name: float(hits[i] / support[i]) for i, name in enumerate(self.labels) if support[i]}

    @property
    def uar(self) -> float:
        recall = self.recall
        return float(np.mean(list(recall.values()))) if recall else float("nan")

    def to_json_dict(self) -> dict:
        return {
            "videos": self.videos,
            "war": self.war,
            "uar": self.uar,
            "recall": self.recall,
            "support": dict(zip(self.labels, self.support.tolist())),
            "labels": list(self.labels),
            "confusion": self.confusion.tolist(),
        }


def score(truth: Sequence[int], predicted: Sequence[int], labels: tuple[str, ...]) -> Scores:
    """The scores of class-index predictions against class-index truths."""
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(confusion, (np.asarray(truth, np.intp), np.asarray(predicted, np.intp)), 1)
    return Scores(labels=labels, confusion=confusion)


def markdown(scores: Scores, title: str) -> str:
    """The scores as a markdown report: summary, per-class recall, confusion matrix."""
    recall = scores.recall
    lines = [f"# {title}", "", f"{scores.videos} videos: WAR {100 * scores.war:.2f} %, UAR {100 * scores.uar:.2f} %", "",
             "| class | videos | recall |", "|---|---:|---:|"]
    for name, count in zip(scores.labels, scores.support.tolist()):
        lines.append(f"| {name} | {count} | {f'{100 * recall[name]:.2f} %' if name in recall else '–'} |")
    lines += ["", "Confusion matrix (rows: truth, columns: prediction):", "",
              "| truth \\ prediction | " + " | ".join(scores.labels) + " |",
              "|---|" + "---:|" * len(scores.labels)]
    for name, row in zip(scores.labels, scores.confusion.tolist()):
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(scores: Scores, path: Path, title: str) -> None:
    """The confusion matrix as a PNG, rows normalised to recall (counts in the cells).
    ImportError when matplotlib is not installed (a camera box has no need of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = scores.confusion
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1.1 * len(scores.labels) + 2, 1.0 * len(scores.labels) + 1.5))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(scores.labels))
    axes.set_xticks(ticks, scores.labels, rotation=45, ha="right")
    axes.set_yticks(ticks, scores.labels)
    axes.set_xlabel("prediction")
    axes.set_ylabel("truth")
    axes.set_title(f"{title}\nWAR {100 * scores.war:.2f} %, UAR {100 * scores.uar:.2f} %")
    for t in ticks:
        for p in ticks:
            axes.text(p, t, str(counts[t, p]), ha="center", va="center", color="white" if rates[t, p] > 0.5 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(folder: str | Path, scores: Scores, title: str, extra: str = "") -> list[str]:
    """report.md (and confusion.png when matplotlib is there) in folder; one line per file or
    per file left out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(markdown(scores, title) + extra)
    notes = [f"wrote {folder / 'report.md'}"]
    try:
        plot_confusion(scores, folder / "confusion.png", title)
        notes.append(f"wrote {folder / 'confusion.png'}")
    except ImportError:
        notes.append("matplotlib is not installed: confusion.png not written (report.md has the matrix)")
    return notes
