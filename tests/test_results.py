"""fsclip-results: the papers' tables (markdown, LaTeX, CSV) and plots from an output tree.

The trees (tests/results_tree.py) hold logs in the trainer's printed format with a crashed run,
missing seeds and a missing dataset. Every number in the golden tables is worked out by hand in
the comments next to it (population std over seeds, as CoOp).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import sys

import pytest

from fsclip.results import collect_runs, main as parse_test_res_main
from fsclip.results.cells import Cell, average_cell, best_of, h_cell, seed_cell
from fsclip.results.cli import main
from fsclip.results.names import dataset_label, method_labels, order_datasets
from fsclip.results.parse import RunResult, harmonic_mean
from fsclip.results.render import to_csv, to_latex, to_markdown
from fsclip.results.tables import TableOptions, build_results
from results_tree import (
    make_base2new_tree, make_fewshot_tree, make_ood_tree, make_xd_tree, seed_runs, write_log, zero_shot,
)


def run_cli(argv):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([str(a) for a in argv])
    return code, buffer.getvalue()


def tables_of(root, **options):
    opts = TableOptions(**options)
    results = build_results(collect_runs(str(root), opts.keyword), opts)
    return {t.name: t for t in results.tables}, results


@pytest.fixture
def fewshot_tree(tmp_path):
    make_fewshot_tree(str(tmp_path))
    return tmp_path


# --------------------------------------------------------------------------- placement
def test_collect_runs_places_every_layout(tmp_path):
    runs = {
        "caltech101/SAFE/rn50_4shots/seed1": ("fewshot", "caltech101", "SAFE/rn50", 4, ""),
        "caltech101/ZeroshotCLIP/vit_b16": ("zeroshot", "caltech101", "ZeroshotCLIP/vit_b16", 0, ""),
        "caltech101/CoOp/rn50_ep50_16shots/nctx16_cscFalse_ctpend/seed2":
            ("fewshot", "caltech101", "CoOp/rn50_ep50/nctx16_cscFalse_ctpend", 16, ""),
        "evaluation/caltech101/SAFE/rn50_4shots_beta0.9/seed1":
            ("eval", "caltech101", "SAFE/rn50 (beta0.9)", 4, ""),
        "evaluation/caltech101/SAFE/vit_b16_4shots/seed1": ("eval", "caltech101", "SAFE/vit_b16 (eval)", 4, ""),
        "evaluation/imagenet_a/SAFE/rn50_16shots_from_imagenet/seed3":
            ("ood", "imagenet_a", "SAFE/rn50", 16, "imagenet"),
        "base2new/train_base/dtd/CoCoOp/vit_b16_16shots/seed1": ("base", "dtd", "CoCoOp/vit_b16", 16, ""),
        "base2new/test_new/dtd/CoCoOp/vit_b16_16shots/seed1": ("new", "dtd", "CoCoOp/vit_b16", 16, ""),
        "base2new/test_new/dtd/ZeroshotCLIP/vit_b16": ("new", "dtd", "ZeroshotCLIP/vit_b16", 0, ""),
        "ablation_x/dtd/SAFE/rn50_1shots/seed1": ("fewshot", "dtd", "ablation_x/SAFE/rn50", 1, ""),
    }
    for rel in runs:
        write_log(str(tmp_path / rel), 50.0, eval_only="evaluation" in rel or "test_new" in rel
                  or "Zeroshot" in rel)
    os.makedirs(tmp_path / "caltech101" / "SAFE" / "rn50_4shots" / "seed1" / "attnpool")  # not a run
    found = {os.path.relpath(os.path.dirname(r.result.path), tmp_path): r for r in collect_runs(str(tmp_path))}
    assert set(found) == set(runs)
    for rel, (kind, dataset, name, shots, source) in runs.items():
        r = found[rel]
        assert (r.kind, r.dataset, r.name, r.shots, r.source) == (kind, dataset, name, shots, source), rel
        assert r.result.value == 50.0, rel
    # one series per (dataset, method, shots): base and new runs, OOD runs stay apart
    assert found["base2new/test_new/dtd/CoCoOp/vit_b16_16shots/seed1"].method == "CoCoOp/vit_b16 (new)"
    assert found["evaluation/imagenet_a/SAFE/rn50_16shots_from_imagenet/seed3"].method == \
        "SAFE/rn50 (from imagenet)"
    # a root inside the layout still places its runs from the folder names above it
    inner = collect_runs(str(tmp_path / "caltech101" / "SAFE" / "rn50_4shots"))
    assert [(r.dataset, r.name, r.shots, r.seed) for r in inner] == [("caltech101", "SAFE/rn50", 4, 1)]


def test_dataset_names_and_papers_order():
    assert dataset_label("oxford_flowers") == "Flowers102"
    assert dataset_label("OxfordFlowers") == "Flowers102"  # Dassl's class name
    assert dataset_label("imagenet_sketch") == "ImageNet-Sketch"
    assert dataset_label("my_custom") == "my_custom"
    coop_11 = ["ucf101", "eurosat", "dtd", "sun397", "fgvc_aircraft", "food101", "oxford_flowers",
               "stanford_cars", "oxford_pets", "caltech101", "imagenet"]
    assert order_datasets(coop_11 + ["zoo", "apes"]) == coop_11[::-1] + ["apes", "zoo"]


# --------------------------------------------------------------------------- cells
def test_cells_spread_missing_average_and_best():
    ok = {1: RunResult("a", 70.0), 2: RunResult("b", 74.0), 3: RunResult("c", None, "crashed")}
    cell = seed_cell(ok, [1, 2, 3])
    assert (cell.mean, cell.spread, cell.found, cell.expected) == (72.0, 2.0, 2, 3)
    assert cell.incomplete
    ci = seed_cell({1: RunResult("a", 70.0), 2: RunResult("b", 74.0)}, [1, 2], ci95=True)
    assert ci.spread == pytest.approx(1.96 * 2.0 / math.sqrt(2))
    assert seed_cell({}, [1, 2, 3]).expected == 3 and seed_cell({}, []).expected == 1
    # average: per-seed averages give the spread; a missing dataset makes it missing
    a = seed_cell({1: RunResult("", 60.0), 2: RunResult("", 62.0)}, [1, 2])
    b = seed_cell({1: RunResult("", 80.0), 2: RunResult("", 90.0)}, [1, 2])
    avg = average_cell([a, b])
    assert avg.mean == 73.0 and avg.spread == pytest.approx(3.0)  # seeds: 70 and 76
    assert average_cell([a, b, seed_cell({}, [1, 2])]).missing
    assert average_cell([a, cell]).partial and average_cell([a, cell]).spread is None
    h = h_cell(a, b)
    assert h.mean == pytest.approx(2 * 61.0 * 85.0 / (61.0 + 85.0)) == pytest.approx(harmonic_mean(61, 85))
    assert h_cell(a, Cell(expected=2)).missing
    # best at the printed precision: ties both marked; lower is better for error
    cells = [Cell(mean=80.004), Cell(mean=79.996), Cell(mean=75.0), Cell()]
    assert best_of(cells, decimals=2) == [True, True, False, False]
    assert best_of(cells, decimals=2, higher_is_better=False) == [False, False, True, False]
    assert best_of([Cell()], decimals=2) == [False]


# --------------------------------------------------------------------------- golden tables
# Few-shot tree: three datasets, SAFE and TipAdapterF at 1 and 4 shots over seeds 1-3,
# zero-shot CLIP. SAFE oxford_pets 1-shot seed2 crashed; TipAdapterF has no oxford_pets 1-shot
# runs and no dtd 4-shot seed3.
#   zero-shot average: (86.3 + 85.8 + 42.3) / 3 = 71.47
#   SAFE 1 shot: 88/89/90 -> 89.00 +- 0.82; 86/-/88 -> 87.00 +- 1.00 (2/3); 50/52/54 -> 52.00
#   +- 1.63; average (89 + 87 + 52) / 3 = 76.00, partial (a cell misses a seed): no spread
#   TipAdapterF 1 shot: 89/89/89 -> 89.00 +- 0.00 (ties SAFE: both bold); pets missing (0/3);
#   48/49/50 -> 49.00; average missing (2 of 3 datasets), never the mean of the two
GOLDEN_MD_1SHOT = """\
### 1 shot: accuracy (%), mean ± std over seeds 1-3

| Method       |       Caltech101 |             OxfordPets |              DTD |             Average |
| :----------- | ---------------: | ---------------------: | ---------------: | ------------------: |
| ZeroshotCLIP |            86.30 |                  85.80 |            42.30 |               71.47 |
| SAFE         | **89.00** ± 0.82 | **87.00** ± 1.00 (2/3) | **52.00** ± 1.63 | **76.00** (partial) |
| TipAdapterF  | **89.00** ± 0.00 |          missing (0/3) |     49.00 ± 0.82 |       missing (2/3) |

Bold: best per column. (k/n): k of n expected runs have a result; partial: a mean over cells \
that miss runs. Average: over the 3 datasets (missing if one is missing)."""

# 4 shots: SAFE 91/92/93 -> 92.00 +- 0.82, 89/90/91 -> 90.00 +- 0.82, 60/63/66 -> 63.00 +- 2.45;
# average 81.67, its spread over the per-seed averages 80, 81.67, 83.33 -> 1.36.
# TipAdapterF 90/91/92 -> 91.00 +- 0.82 (twice: best on OxfordPets), 58/60 -> 59.00 +- 1.00
# (2/3), average (91 + 91 + 59) / 3 = 80.33, partial.
GOLDEN_TEX_4SHOTS = r"""% 4 shots: accuracy (%), mean ± std over seeds 1-3
% Bold: best per column.
% (k/n): k of n expected runs have a result; partial: a mean over cells that miss runs.
% Average: over the 3 datasets (missing if one is missing).
\begin{tabular}{lcccc}
\toprule
Method & Caltech101 & OxfordPets & DTD & Average \\
\midrule
ZeroshotCLIP & 86.30 & 85.80 & 42.30 & 71.47 \\
SAFE & \textbf{92.00} $\pm$ 0.82 & 90.00 $\pm$ 0.82 & \textbf{63.00} $\pm$ 2.45 & \textbf{81.67} $\pm$ 1.36 \\
TipAdapterF & 91.00 $\pm$ 0.82 & \textbf{91.00} $\pm$ 0.82 & 59.00 $\pm$ 1.00 (2/3) & 80.33 (partial) \\
\bottomrule
\end{tabular}"""

GOLDEN_CSV_1SHOT = """\
method,Caltech101,Caltech101 std,Caltech101 runs,OxfordPets,OxfordPets std,OxfordPets runs,\
DTD,DTD std,DTD runs,Average,Average std,Average runs,best
ZeroshotCLIP,86.30,,1/1,85.80,,1/1,42.30,,1/1,71.47,,3/3,
SAFE,89.00,0.82,3/3,87.00,1.00,2/3,52.00,1.63,3/3,76.00,,3/3 partial,Caltech101;OxfordPets;DTD;Average
TipAdapterF,89.00,0.00,3/3,,,0/3,49.00,0.82,3/3,,,2/3,Caltech101
"""


def test_fewshot_golden_markdown_latex_csv(fewshot_tree):
    tables, results = tables_of(fewshot_tree)
    assert list(tables) == ["fewshot_1shots", "fewshot_4shots"]
    assert to_markdown(tables["fewshot_1shots"]) == GOLDEN_MD_1SHOT
    assert to_latex(tables["fewshot_4shots"]) == GOLDEN_TEX_4SHOTS
    assert to_csv(tables["fewshot_1shots"]) == GOLDEN_CSV_1SHOT
    root = str(fewshot_tree)
    assert results.problems == [
        f"oxford_pets / SAFE/rn50 / 1 shot: {root}/oxford_pets/SAFE/rn50_1shots/seed2/log.txt: "
        "no 'Finish training' line: crashed or unfinished run",
        "oxford_pets / TipAdapterF/rn50 / 1 shot: no runs (seeds 1-3)",
        f"dtd / TipAdapterF/rn50 / 4 shots: no run for seed 3 (no seed3 in {root}/dtd/TipAdapterF/rn50_4shots)",
    ]


def test_average_column_is_never_a_mean_of_fewer_datasets(fewshot_tree):
    tables, _ = tables_of(fewshot_tree)
    one = tables["fewshot_1shots"]
    assert one.cells["", "TipAdapterF", "Average"].missing
    assert one.cells["", "TipAdapterF", "Average"].found == 2
    # once the missing runs exist, the same cell is a plain mean of the three datasets
    seed_runs(str(fewshot_tree / "oxford_pets" / "TipAdapterF" / "rn50_1shots"), [84.0, 85.0, 86.0],
              "TipAdapterF", "rn50", "oxford_pets")
    tables, _ = tables_of(fewshot_tree)
    avg = tables["fewshot_1shots"].cells["", "TipAdapterF", "Average"]
    assert avg.mean == pytest.approx((89.0 + 85.0 + 49.0) / 3) and not avg.incomplete
    # per-seed averages (89+84+48)/3, (89+85+49)/3, (89+86+50)/3: 74.33 -+ 2/3 -> std sqrt(8/27)
    assert avg.spread == pytest.approx(math.sqrt(8 / 27))
    # --seeds 1 2 3 4: every seeded cell now misses a run, zero-shot cells are unaffected
    tables, _ = tables_of(fewshot_tree, seeds=[1, 2, 3, 4])
    cells = tables["fewshot_4shots"].cells
    assert cells["", "SAFE", "DTD"].found == 3 and cells["", "SAFE", "DTD"].expected == 4
    assert (cells["", "ZeroshotCLIP", "DTD"].found, cells["", "ZeroshotCLIP", "DTD"].expected) == (1, 1)


def test_a_dataset_only_zero_shot_ran_on_is_a_column_shift_targets_are_not(fewshot_tree):
    zero_shot(str(fewshot_tree / "eurosat/ZeroshotCLIP/rn50"), 37.6, "eurosat")
    zero_shot(str(fewshot_tree / "imagenet_sketch/ZeroshotCLIP/rn50"), 35.4, "imagenet_sketch")
    tables, results = tables_of(fewshot_tree)
    table = tables["fewshot_4shots"]
    assert table.columns == ["Caltech101", "OxfordPets", "DTD", "EuroSAT", "Average"]
    assert table.cells["", "SAFE", "EuroSAT"].missing and table.cells["", "SAFE", "Average"].missing
    assert table.cells["", "ZeroshotCLIP", "Average"].mean == pytest.approx((86.3 + 85.8 + 42.3 + 37.6) / 4)
    assert "eurosat / SAFE/rn50 / 4 shots: no runs (seeds 1-3)" in results.problems


def test_ci95_and_lower_is_better_keyword(fewshot_tree):
    tables, _ = tables_of(fewshot_tree, ci95=True)
    cell = tables["fewshot_4shots"].cells["", "SAFE", "DTD"]
    assert cell.spread == pytest.approx(1.96 * math.sqrt(6) / math.sqrt(3))
    assert "mean ± ci95 over seeds 1-3" in tables["fewshot_4shots"].title
    tables, _ = tables_of(fewshot_tree, keyword="error")
    cells = tables["fewshot_4shots"].cells
    assert cells["", "SAFE", "DTD"].mean == pytest.approx(37.0)  # 100 - 63
    assert ("", "SAFE", "DTD") in tables["fewshot_4shots"].best  # the lowest error
    assert ("", "ZeroshotCLIP", "DTD") not in tables["fewshot_4shots"].best
    assert "Bold: best per column (lowest)." in tables["fewshot_4shots"].notes


# OOD tree: trained on imagenet (16 shots), evaluated on the four shifts.
#   zero-shot targets average (53.3 + 35.4 + 21.7 + 56.0) / 4 = 41.60
#   SAFE imagenet 66/66.5/67 -> 66.50 +- 0.41; targets 58.00, 37.00, 23.00, 60.00 (each +- 0.82);
#   average 44.50, per-seed averages 43.5/44.5/45.5 -> +- 0.82
#   TipAdapterF imagenet_a seed2 crashed: 20/22 -> 21.00 +- 1.00 (2/3); average
#   (58.5 + 34.3 + 21 + 57) / 4 = 42.70 (partial)
GOLDEN_MD_OOD = """\
### Distribution shift: trained on ImageNet (16 shots), accuracy (%), mean ± std over seeds 1-3

| Method       |         ImageNet |      ImageNet-V2 |  ImageNet-Sketch |         ImageNet-A |       ImageNet-R |          Average |
| :----------- | ---------------: | ---------------: | ---------------: | -----------------: | ---------------: | ---------------: |
| ZeroshotCLIP |            60.30 |            53.30 |            35.40 |              21.70 |            56.00 |            41.60 |
| SAFE         | **66.50** ± 0.41 |     58.00 ± 0.82 | **37.00** ± 0.82 |   **23.00** ± 0.82 | **60.00** ± 0.82 | **44.50** ± 0.82 |
| TipAdapterF  |     65.50 ± 0.00 | **58.50** ± 0.00 |     34.30 ± 0.00 | 21.00 ± 1.00 (2/3) |     57.00 ± 0.00 |  42.70 (partial) |

Bold: best per column. (k/n): k of n expected runs have a result; partial: a mean over cells \
that miss runs. Average: over the 4 targets (missing if one is missing)."""

GOLDEN_TEX_OOD_HEAD = r"""\begin{tabular}{lcccccc}
\toprule
 & \multicolumn{1}{c}{Source} & \multicolumn{5}{c}{Target} \\
\cmidrule(lr){2-2} \cmidrule(lr){3-7}
Method & ImageNet & ImageNet-V2 & ImageNet-Sketch & ImageNet-A & ImageNet-R & Average \\
\midrule
ZeroshotCLIP & 60.30 & 53.30 & 35.40 & 21.70 & 56.00 & 41.60 \\"""


def test_ood_golden(tmp_path):
    make_ood_tree(str(tmp_path))
    tables, results = tables_of(tmp_path)
    assert list(tables) == ["fewshot_16shots", "ood_imagenet_16shots"]
    ood = tables["ood_imagenet_16shots"]
    assert to_markdown(ood) == GOLDEN_MD_OOD
    assert GOLDEN_TEX_OOD_HEAD in to_latex(ood)
    csv_rows = to_csv(ood).splitlines()
    assert csv_rows[3].startswith("TipAdapterF,65.50,0.00,3/3,58.50,0.00,3/3,")
    assert csv_rows[3].endswith(",57.00,0.00,3/3,42.70,,4/4 partial,ImageNet-V2")
    assert results.problems == [
        f"imagenet_a / TipAdapterF/rn50 / 16 shots from imagenet: {tmp_path}/evaluation/imagenet_a/"
        "TipAdapterF/rn50_16shots_from_imagenet/seed2/log.txt: no '=> result' line: crashed or "
        "unfinished run"]
    # the source column is the few-shot result of the same models
    assert tables["fewshot_16shots"].cells["", "SAFE", "ImageNet"].mean == ood.cells["", "SAFE", "ImageNet"].mean


# Cross-dataset tree: trained on ImageNet (16 shots, vit_b16), three of the ten targets run.
#   CoOp imagenet 71/71.5/72 -> 71.50 +- 0.41; caltech101 93/93.5/94 -> 93.50 +- 0.41;
#   dtd 41/42/43 -> 42.00 +- 0.82; CoCoOp dtd 45/45.5 (no seed3) -> 45.25 +- 0.25 (2/3)
#   the seven targets not run are empty; the average over the ten is missing (3/10)
#   CoOp's ImageNet-V2 run (same classes as ImageNet) goes to the distribution-shift table
GOLDEN_MD_XD = """\
### Cross-dataset transfer: trained on ImageNet (16 shots), accuracy (%), mean ± std over seeds 1-3

| Method       |         ImageNet |       Caltech101 |       OxfordPets | StanfordCars | Flowers102 | Food101 | FGVCAircraft | SUN397 |                    DTD | EuroSAT | UCF101 |        Average |
| :----------- | ---------------: | ---------------: | ---------------: | -----------: | ---------: | ------: | -----------: | -----: | ---------------------: | ------: | -----: | -------------: |
| ZeroshotCLIP |            66.70 |            93.30 |            89.10 |              |            |         |              |        |                  44.50 |         |        | missing (3/10) |
| CoCoOp       |     71.00 ± 0.00 | **94.00** ± 0.00 | **90.00** ± 0.00 |              |            |         |              |        | **45.25** ± 0.25 (2/3) |         |        | missing (3/10) |
| CoOp         | **71.50** ± 0.41 |     93.50 ± 0.41 |     89.00 ± 0.00 |              |            |         |              |        |           42.00 ± 0.82 |         |        | missing (3/10) |

Bold: best per column. (k/n): k of n expected runs have a result; partial: a mean over cells \
that miss runs. Average: over the 10 targets (missing if one is missing). Empty: not run \
(StanfordCars, Flowers102, Food101, FGVCAircraft, SUN397, EuroSAT, UCF101)."""


def test_cross_dataset_golden(tmp_path):
    make_xd_tree(str(tmp_path))
    tables, results = tables_of(tmp_path)
    assert list(tables) == ["fewshot_16shots", "ood_imagenet_16shots", "xd_imagenet_16shots"]
    xd = tables["xd_imagenet_16shots"]
    assert to_markdown(xd) == GOLDEN_MD_XD
    assert tables["ood_imagenet_16shots"].columns == ["ImageNet", "ImageNet-V2"]  # same classes: the shift table
    csv_rows = to_csv(xd).splitlines()
    # CoOp: source, Caltech101, OxfordPets, then StanfordCars .. SUN397 empty (5 x 3 fields), DTD
    assert csv_rows[3] == ("CoOp,71.50,0.41,3/3,93.50,0.41,3/3,89.00,0.00,3/3," + ",,," * 5
                           + "42.00,0.82,3/3,,,,,,,,,3/10,ImageNet")
    assert r"\multicolumn{11}{c}{Target}" in to_latex(xd)
    # the targets not run are no problem; CoCoOp's absent seed is
    assert [p for p in results.problems if "from imagenet" in p] == [
        f"dtd / CoCoOp/vit_b16 / 16 shots from imagenet: no run for seed 3 (no seed3 in "
        f"{tmp_path}/evaluation/dtd/CoCoOp/vit_b16_16shots_from_imagenet)"]
    code, out = run_cli([tmp_path, "--tables", "xd"])
    assert code == 0 and "### Cross-dataset transfer: trained on ImageNet" in out
    assert "Distribution shift" not in out and "### 16 shots" not in out


def test_cross_dataset_kit_case(tmp_path):
    """SynthShapes -> SynthTextures (other classes): one target, no fixed columns, no average."""
    make_xd_tree(str(tmp_path), kit=True)
    tables, _ = tables_of(tmp_path)
    xd = tables["xd_synth_shapes_4shots"]
    assert xd.columns == ["SynthShapes", "SynthTextures"]
    assert xd.cells["", "CoOp", "SynthTextures"].mean == pytest.approx(33.0)  # 30/33/36
    assert "ood_synth_shapes_4shots" not in tables


# Base-to-new tree (16 shots, vit_b16): caltech101 and dtd; CoOp misses dtd new-class seed3.
#   H = 2 b n / (b + n) of the means: ZS caltech 2*96.8*94/190.8 = 95.38; CoCoOp 2*98*93.8/191.8
#   = 95.85; CoOp 2*98*89.8/187.8 = 93.72; ZS dtd 56.35; CoCoOp dtd 2*77*56/133 = 64.84; CoOp dtd
#   2*79.4*42/121.4 = 54.94 (partial: new misses seed3)
#   Average: ZS base 75.00, new 76.95, H of those 75.96; CoCoOp 87.50 +- 0.08 (per-seed 87.4,
#   87.5, 87.6), 74.90 +- 0.08, H 80.71; CoOp 88.70 +- 0.00, 65.90 (partial), H 75.62 (partial)
GOLDEN_MD_B2N = """\
### Base-to-new, 16 shots: accuracy (%) on the base and new classes, mean ± std over seeds 1-3; \
H = harmonic mean of the two means

| Dataset        | Method       |             Base |                New |               H |
| :------------- | :----------- | ---------------: | -----------------: | --------------: |
| **Caltech101** | ZeroshotCLIP |            96.80 |          **94.00** |           95.38 |
|                | CoCoOp       | **98.00** ± 0.16 |       93.80 ± 0.16 |       **95.85** |
|                | CoOp         | **98.00** ± 0.00 |       89.80 ± 0.00 |           93.72 |
| **DTD**        | ZeroshotCLIP |            53.20 |          **59.90** |           56.35 |
|                | CoCoOp       |     77.00 ± 0.00 |       56.00 ± 0.00 |       **64.84** |
|                | CoOp         | **79.40** ± 0.00 | 42.00 ± 1.00 (2/3) | 54.94 (partial) |
| **Average**    | ZeroshotCLIP |            75.00 |          **76.95** |           75.96 |
|                | CoCoOp       |     87.50 ± 0.08 |       74.90 ± 0.08 |       **80.71** |
|                | CoOp         | **88.70** ± 0.00 |    65.90 (partial) | 75.62 (partial) |

Bold: best per column. (k/n): k of n expected runs have a result; partial: a mean over cells \
that miss runs. Average: base and new averaged over the 2 datasets, H of the two averages (as \
CoCoOp) (missing if one is missing)."""

GOLDEN_CSV_B2N_TAIL = """\
DTD,CoOp,79.40,0.00,3/3,42.00,1.00,2/3,54.94,,2/2 partial,Base
Average,ZeroshotCLIP,75.00,,2/2,76.95,,2/2,75.96,,2/2,New
Average,CoCoOp,87.50,0.08,2/2,74.90,0.08,2/2,80.71,,2/2,H
Average,CoOp,88.70,0.00,2/2,65.90,,2/2 partial,75.62,,2/2 partial,Base
"""


def test_base2new_golden(tmp_path):
    make_base2new_tree(str(tmp_path))
    tables, results = tables_of(tmp_path)
    assert list(tables) == ["base2new_16shots"]
    table = tables["base2new_16shots"]
    assert to_markdown(table) == GOLDEN_MD_B2N
    csv_text = to_csv(table)
    assert csv_text.startswith("dataset,method,Base,Base std,Base runs,New,New std,New runs,H,H std,H runs,best\n")
    assert csv_text.endswith(GOLDEN_CSV_B2N_TAIL)
    h = table.cells["Average", "CoCoOp", "H"].mean
    assert h == pytest.approx(harmonic_mean((98.0 + 77.0) / 2, (93.8 + 56.0) / 2))  # H of the averages
    assert h != pytest.approx((95.854 + 64.842) / 2, abs=0.01)  # not the average of the H's
    assert results.problems == [
        f"dtd / CoOp/vit_b16 / 16 shots / new classes: no run for seed 3 (no seed3 in "
        f"{tmp_path}/base2new/test_new/dtd/CoOp/vit_b16_16shots)"]
    # the CoOp-style summary of the same runs agrees
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        parse_test_res_main([str(tmp_path / "base2new/train_base/caltech101/CoCoOp/vit_b16_16shots"),
                             "--base2new", str(tmp_path / "base2new/test_new/caltech101/CoCoOp/vit_b16_16shots")])
    assert "* H: 95.85%" in buffer.getvalue()


# --------------------------------------------------------------------------- names, filters
def test_method_names_auto_trainer_full_and_rename(tmp_path):
    seed_runs(str(tmp_path / "dtd/SAFE/rn50_1shots"), [50.0], "SAFE", "rn50", "dtd", seeds=[1])
    seed_runs(str(tmp_path / "dtd/SAFE/micro_rn_1shots"), [40.0], "SAFE", "micro_rn", "dtd", seeds=[1])
    seed_runs(str(tmp_path / "dtd/TipAdapter/rn50_1shots"), [45.0], "TipAdapter", "rn50", "dtd", seeds=[1])
    seed_runs(str(tmp_path / "evaluation/dtd/TipAdapter/rn50_1shots_beta0.9"), [46.0], "TipAdapter",
              "rn50", "dtd", eval_only=True, seeds=[1])

    def rows(**options):
        tables, _ = tables_of(tmp_path, **options)
        return tables["fewshot_1shots"].groups[0][1]

    # auto: SAFE has two configs, so both are Trainer/cfg; TipAdapter has one (its re-run keeps its tag)
    assert rows() == ["SAFE/micro_rn", "SAFE/rn50", "TipAdapter", "TipAdapter (beta0.9)"]
    assert rows(method_name="full") == ["SAFE/micro_rn", "SAFE/rn50", "TipAdapter/rn50",
                                        "TipAdapter/rn50 (beta0.9)"]
    from fsclip.errors import ConfigError

    with pytest.raises(ConfigError, match="'SAFE/micro_rn' and 'SAFE/rn50' would both be labelled 'SAFE'"):
        rows(method_name="trainer")
    assert rows(method_name="trainer", methods=["SAFE/rn50", "TipAdapter*"]) == \
        ["SAFE", "TipAdapter", "TipAdapter (beta0.9)"]
    assert rows(method_name="full", methods=["TipAdapter", "SAFE"]) == \
        ["TipAdapter/rn50", "TipAdapter/rn50 (beta0.9)", "SAFE/micro_rn", "SAFE/rn50"]
    assert rows(renames={"SAFE/micro_rn": "SAFE (MicroRN)", "TipAdapter": "Tip-Adapter"}) == \
        ["SAFE (MicroRN)", "SAFE/rn50", "Tip-Adapter", "Tip-Adapter (beta0.9)"]
    assert rows(renames={"CoOp": "x"}) == rows()  # a rename list may name methods not shown
    with pytest.raises(ConfigError, match="'SAFE/micro_rn' and 'SAFE/rn50' would both be labelled 'S'"):
        rows(renames={"SAFE/micro_rn": "S", "SAFE/rn50": "S"})
    assert method_labels(["a/x"], {"a/x": "a"}, "auto") == {"a/x": "a"}


def test_filters_choose_rows_columns_and_shots(fewshot_tree):
    tables, _ = tables_of(fewshot_tree, methods=["TipAdapter*", "SAFE"], datasets=["dtd", "Caltech*"],
                          shots=[4])
    assert list(tables) == ["fewshot_4shots"]
    table = tables["fewshot_4shots"]
    assert table.groups[0][1] == ["TipAdapterF", "SAFE"]  # the patterns' order; zero-shot left out
    assert table.columns == ["DTD", "Caltech101", "Average"]
    assert table.cells["", "TipAdapterF", "Average"].mean == pytest.approx((59.0 + 91.0) / 2)


# --------------------------------------------------------------------------- command line
def test_cli_writes_every_format_and_keeps_coop_parser_working(tmp_path):
    root = tmp_path / "output"
    make_fewshot_tree(str(root))
    make_ood_tree(str(root))
    make_base2new_tree(str(root))
    out = tmp_path / "tables"
    os.makedirs(out)
    (out / "results.md").write_text("stale")
    code, stdout = run_cli([root, "--out", out, "--format", "md", "latex", "csv", "--strict"])
    assert code == 1  # --strict: runs are missing
    names = sorted(os.listdir(out))
    assert names == sorted(["results.md"] + [f"{t}.{ext}" for ext in ("tex", "csv") for t in
                                             ("fewshot_1shots", "fewshot_4shots", "fewshot_16shots",
                                              "ood_imagenet_16shots", "base2new_16shots")])
    report = (out / "results.md").read_text()
    rows = [" ".join(line.split()) for line in report.splitlines()]  # padding aside
    assert report.startswith("### 1 shot: accuracy (%)") and "### Missing runs (not in any mean)" in rows
    # ZeroshotCLIP has two configs in this tree (rn50, vit_b16 for base-to-new): auto names them;
    # ImageNet (the OOD source) is a few-shot column, missing for the 1- and 4-shot runs; the
    # zero-shot row is in every few-shot table, the best marks are each table's own
    zs_1_4 = "| ZeroshotCLIP/rn50 | **60.30** | 86.30 | 85.80 | 42.30 | **68.67** |"
    assert rows.count(zs_1_4) == 2
    assert "| ZeroshotCLIP/rn50 | 60.30 | **86.30** | **85.80** | **42.30** | **68.67** |" in rows  # 16
    assert "| SAFE | missing (0/3) | **89.00** ± 0.82 | **87.00** ± 1.00 (2/3) | **52.00** ± 1.63 | " \
        "missing (3/4) |" in rows
    assert "| **Caltech101** | ZeroshotCLIP/vit_b16 | 96.80 | **94.00** | 95.38 |" in rows
    assert (out / "fewshot_4shots.tex").read_text().startswith("% 4 shots: accuracy (%)")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out / "results.md").st_mode) == 0o666 & ~umask  # as open() gives
    assert "Wrote 11 files:" in stdout
    # only the base-to-new table: names come from its runs (one ZeroshotCLIP config there)
    code, stdout = run_cli([root, "--tables", "base2new"])
    assert code == 0 and stdout.startswith("### Base-to-new, 16 shots")
    assert "| **Caltech101** | ZeroshotCLIP | 96.80 | **94.00** | 95.38 |" in \
        [" ".join(line.split()) for line in stdout.splitlines()] and "shot:" not in stdout
    assert run_cli([root, "--out", out])[0] == 0
    # CoOp's parse_test_res interface on the same tree
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert parse_test_res_main([str(root / "caltech101/SAFE/rn50_1shots")]) == 0
        assert parse_test_res_main([str(root / "evaluation/imagenetv2/SAFE/rn50_16shots_from_imagenet"),
                                    "--test-log"]) == 0
        assert parse_test_res_main([str(root), "--table"]) == 0
    text = buffer.getvalue()
    assert "* accuracy: 89.00% +- 0.82%" in text and "* accuracy: 58.00% +- 0.82%" in text
    assert "CoCoOp/vit_b16 (base)" in text and "SAFE/rn50 (from imagenet)" in text


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    code, out = run_cli([tmp_path / "absent"])
    assert code == 2 and out.count("\n") == 1 and out.startswith("ERROR: ") and "absent" in out
    make_fewshot_tree(str(tmp_path))
    code, out = run_cli([tmp_path, "--plots"])
    assert code == 2 and out.startswith("ERROR: --plots writes files: add --out DIR")
    code, out = run_cli([tmp_path, "--method-name", "trainer", "--rename", "SAFE"])
    assert code == 2 and out.startswith("ERROR: --rename 'SAFE': expected NAME=LABEL")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, out = run_cli([tmp_path, "--out", tmp_path / "o", "--plots", "png"])
    assert code == 2 and out.count("\n") == 1
    assert out.startswith("ERROR: plots need matplotlib") and "pip install 'fsclip[plots]'" in out
    assert not os.path.exists(tmp_path / "o")  # nothing written before the error
    empty = tmp_path / "empty"
    os.makedirs(empty)
    assert run_cli([empty])[0] == 1


# --------------------------------------------------------------------------- plots
def test_plot_one_line_per_method_png_and_pdf(fewshot_tree, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from fsclip.results.plots import curve_figures

    _, results = tables_of(fewshot_tree)
    figures = curve_figures(results.curves)
    assert list(figures) == ["caltech101", "oxford_pets", "dtd", "average", "curves"]
    for panel in ("caltech101", "dtd", "average"):
        ax = figures[panel].axes[0]
        lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert sorted(lines) == ["SAFE", "TipAdapterF", "ZeroshotCLIP"], panel
        assert len(ax.collections) >= 2  # the std bands
    ax = figures["caltech101"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["SAFE"].get_xdata()) == [0.0, 2.0]  # log2 of 1 and 4 shots
    assert list(lines["SAFE"].get_ydata()) == [89.0, 92.0]
    assert list(lines["ZeroshotCLIP"].get_ydata()) == [86.3, 86.3]  # horizontal line
    assert list(lines["_ZeroshotCLIP at 0 shots"].get_xdata()) == [-1.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "4"]
    average = {line.get_label(): line for line in figures["average"].axes[0].get_lines()}
    assert list(average["SAFE"].get_ydata()) == pytest.approx([76.0, 245 / 3])
    assert math.isnan(average["TipAdapterF"].get_ydata()[0])  # missing average: no point
    assert len(figures["curves"].axes) == 4

    code, _ = run_cli([fewshot_tree, "--out", tmp_path / "out", "--plots", "--format", "csv"])
    assert code == 0
    plots = tmp_path / "out" / "plots"
    for name in ("caltech101", "oxford_pets", "dtd", "average", "curves"):
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.size[0] > 600 and image.size[1] > 400
            assert len(set(image.convert("L").tobytes())) > 10  # something was drawn
        pdf = (plots / f"{name}.pdf").read_bytes()
        assert pdf[:5] == b"%PDF-" and b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType
    assert not [n for n in os.listdir(plots) if n.startswith(".tmp-")]


def test_plot_methods_beyond_the_palette_keep_distinct_styles():
    """16 methods (the kit demo's count) > 12 colours: no two curves share colour, marker and dashes."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from fsclip.results.cells import Cell
    from fsclip.results.plots import draw_panel, method_colors
    from fsclip.results.tables import Curves

    methods = [f"M{i}" for i in range(16)]
    lines = {m: {1: Cell(50.0 + i, 1.0, 3, 3), 4: Cell(60.0 + i, 1.0, 3, 3)} for i, m in enumerate(methods)}
    curves = Curves("accuracy", "std", [("d", "D")], methods, {"d": lines}, {})
    ax = Figure().add_subplot()
    draw_panel(ax, curves, "d", "D", method_colors(methods))
    drawn = ax.get_lines()
    styles = {(line.get_color(), line.get_marker(), str(line.get_linestyle())) for line in drawn}
    assert len(drawn) == 16 and len(styles) == 16, styles
