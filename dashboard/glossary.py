"""Plain words for every metric and term a page shows (tooltips: `help=glossary.say("aux_fpr")`)."""

from __future__ import annotations

TERMS: dict[str, str] = {
    "Image AUROC": "how well the image scores rank anomalous images above good ones: 100% perfect, 50% chance",
    "Image AP": "average precision of the image scores: how clean the top of the ranking is (100% perfect)",
    "Pixel AUROC": "how well the map ranks defect pixels above normal pixels, over every target image",
    "Pixel AUPRO (MVTec AD, exact)": "share of each defect region the map covers, averaged over regions, "
    "up to 30% false-positive rate (small defects count as much as large ones)",
    "Pixel AUPRO (official, AnomalyCLIP's)": "the same overlap measure computed as AnomalyCLIP's code does "
    "(the paper's figures), on a coarser threshold grid",
    "aux_fpr": "threshold rule: the score that flags a set share (e.g. 5%) of the good auxiliary images; "
    "chosen without any target label",
    "aux best F1": "threshold rule: the score with the best F1 on the auxiliary images' labels",
    "oracle": "the target's own best-F1 threshold: it uses the target labels, so it flatters",
    "image score": "the image's anomaly score: its map pooled with the run's aggregation (max, mean or LSE)",
    "p(anomaly)": "the patch's anomaly probability: sigmoid of the anomaly logit minus the normal logit",
    "mean share of l_a - l_n": "how much of the region's anomaly-minus-normal logit this atom supplies, "
    "averaged over the region's patches (positive: pushes towards anomalous)",
    "contribution": "the atom's part of the patch's anomaly logit minus normal logit (l_a - l_n): activation "
    "times its guide coefficient; positive pushes towards anomalous",
    "activation s_j": "how strongly atom j fires on a patch: its SAE code, zero where it does not fire",
    "mean activation inside": "the atom's average activation s_j over the region's patches",
    "mean activation elsewhere": "the atom's average activation s_j over the rest of the image",
    "share of guide": "the atom's part of its guide's total coefficient mass",
    "fires on": "share of auxiliary patches where the atom's activation is above zero",
    "in-defect lift": "how much more of its activation falls inside defect masks than the auxiliary base rate",
    "dead": "an atom that never fires on the auxiliary set: nothing to show, nothing it contributes",
    "categories spanned": "in how many auxiliary categories the atom reaches a quarter of its peak in-defect "
    "activation: many = class-general, one = class-specific",
    "fitted scale": "colours fitted to this run: blue = the median normal auxiliary pixel, red = their 99.9th "
    "percentile (log-odds), so a red pixel is rarer than 1 in 1000 normal ones",
    "TP": "true positive: an anomalous image called anomalous",
    "FP": "false positive: a good image called anomalous",
    "FN": "false negative: an anomalous image called good (a missed defect)",
    "TN": "true negative: a good image called good",
}


def say(term: str) -> str:
    """The plain words for `term` (the term itself when it has none: a tooltip never fails)."""
    return TERMS.get(term, term)
