"""fsclip-results --reference: the shipped published tables (each self-checked), the flag
logic, and the comparison tables on the synthetic output trees of tests/results_tree.py.

Hand-worked numbers: SAFE at 4 shots on Caltech101 ran 91, 92, 93 (mean 92, population std
0.816); SAFE Table I prints 91.72, so the difference is +0.28, within 1 point and 2 std.
On OxfordPets, 89, 90, 91 against 88.52: +1.48, over 1 point (2 std = 1.63: not over that).
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from fsclip.errors import ConfigError
from fsclip.results import collect_runs, reference
from fsclip.results.cli import main
from fsclip.results.reference import Compared, compare, flags, load, self_check
from results_tree import make_fewshot_tree, make_ood_tree


def run_cli(argv):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main([str(a) for a in argv])
    return code, buffer.getvalue()


@pytest.fixture(scope="module")
def fewshot_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    make_fewshot_tree(str(root))
    return root


@pytest.fixture(scope="module")
def ood_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood")
    make_ood_tree(str(root))
    return root


# ------------------------------------------------------------------------ the shipped tables
def test_the_papers_tables_ship():
    assert {"safe_table1", "safe_table3", "dpt_table1", "dpt_table2", "dpt_table3",
            "vtclip_table1", "vtclip_table2"} <= set(reference.available())


@pytest.mark.parametrize("name", reference.available())
def test_every_shipped_table_loads_and_passes_its_self_check(name):
    ref = load(name)
    assert ref.rows and ref.notes
    assert self_check(ref) == []
    for row in ref.rows:  # each row names its source
        assert row.paper and row.table and row.backbone and row.protocol and row.shots >= 0
    if ref.has_average and not ref.average_only:  # the average is the mean of the row
        for row in ref.rows:
            assert abs(sum(row.values.values()) / len(row.values) - row.average) <= 0.011


def test_shipped_numbers_read_as_printed():
    """Spot checks against the papers' text, including the repaired ones."""
    t1 = load("safe_table1")
    safe16 = next(r for r in t1.rows if r.trainer == "SAFE" and r.shots == 16)
    assert safe16.values["fgvc_aircraft"] == 42.03 and safe16.average == 77.33
    assert len(t1.rows) == 2 + 7 * 5 and t1.shots == [0, 1, 2, 4, 8, 16]
    dpt1 = next(r for r in load("dpt_table1").rows if r.method == "VLP-CLIP-CAVPT")
    assert dpt1.values["oxford_flowers"] == 96.45 and dpt1.average == 80.14
    dpt3 = {r.label: r.values for r in load("dpt_table3").rows}
    assert dpt3["EuroSAT"] == {"5": 92.31, "FULL": 92.13}  # printed '9231'
    assert dpt3["Caltech101"]["5"] == 93.90  # printed '9390'
    assert any("9231" in n for n in load("dpt_table3").notes)


def test_self_check_catches_a_broken_table():
    ref = load("safe_table1")
    row = ref.rows[3]
    row.values["imagenet"] = 5.93  # a lost digit, as a PDF extraction can do
    problems = self_check(ref)
    assert len(problems) == 1 and "printed average" in problems[0]
    row.values["imagenet"] = 593.0
    assert any("not a percentage" in p for p in self_check(ref))


def test_unknown_table_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="safe_table1"):
        load("safe_table9")


# ------------------------------------------------------------------------ flags
@pytest.mark.parametrize("mean,std,published,expected", [
    (92.0, 0.816, 91.72, []),                  # +0.28: within 1 point and 2 std
    (90.0, 0.816, 88.52, [">1pt"]),            # +1.48: over 1 point, under 2 std (1.63)
    (60.5, 0.1, 60.0, [">2std"]),              # +0.5: under 1 point, over 2 std (0.2)
    (58.0, 0.2, 61.0, [">1pt", ">2std"]),      # -3: both
    (61.5, None, 60.0, [">1pt"]),              # one run: no std to compare with
    (None, None, 60.0, []), (60.0, 1.0, None, []),  # an empty side: nothing to flag
])
def test_flags(mean, std, published, expected):
    assert flags(mean, std, published) == expected


# ------------------------------------------------------------------------ comparing
def _table(tables, shots):
    return next(t for t in tables if t.name.endswith(f"_{shots}shots"))


def _row(table, label):
    return dict(zip(table.columns, dict(table.rows)[label]))


def test_fewshot_comparison_cells(fewshot_tree):
    records = collect_runs(str(fewshot_tree))
    tables = compare(records, load("safe_table1"))
    # by default the shot counts the user ran (1 and 4 of the paper's 1, 2, 4, 8, 16)
    assert [t.name for t in tables] == [f"reference_safe_table1_{s}shots" for s in (1, 4)]
    t4 = _table(tables, 4)
    safe = _row(t4, "SAFE (Ours) vs SAFE")
    assert safe["Caltech101"].mean == pytest.approx(92.0)
    assert safe["Caltech101"].diff == pytest.approx(0.28)
    assert safe["Caltech101"].flags == []
    assert safe["OxfordPets"].flags == [">1pt"]
    assert reference.cell_text(safe["Caltech101"]) == "92.00 ± 0.82 / 91.72 (+0.28)"
    assert reference.cell_text(safe["OxfordPets"]) == "90.00 ± 0.82 / 88.52 (**+1.48**)"
    # a dataset the user did not run: an empty side, and no average of ours
    assert safe["ImageNet"].ours is None and safe["ImageNet"].published == 63.03
    assert reference.cell_text(safe["ImageNet"]) == "– / 63.03"
    assert safe["Average"].ours is None and safe["Average"].published == 71.07
    # a missing seed shows; a method without a fsclip run is a published-only row
    tip = _row(t4, "Tip-Adapter-F vs TipAdapterF")
    assert reference.cell_text(tip["DTD"]).startswith("59.00 ± 1.00 (2/3) / 57.21")
    assert all(c.ours is None for c in _row(t4, "CuPL").values())
    # zero-shot rows in every table, compared with the zero-shot runs
    zs = _row(t4, "Zero-Shot CLIP vs ZeroshotCLIP")
    assert zs["DTD"].mean == pytest.approx(42.3) and zs["DTD"].std is None
    # a shot count the user did not run: every cell of ours empty, no error
    (t2,) = compare(records, load("safe_table1"), shots=[2])
    assert all(c.ours is None for c in _row(t2, "SAFE (Ours)").values())


def test_average_is_compared_when_every_column_ran(tmp_path):
    """A tree with all 8 DPT datasets at 16 shots: the averages are compared too."""
    from results_tree import seed_runs

    ref = load("dpt_table1")
    row = next(r for r in ref.rows if r.trainer == "VLP_CLIP_CAVPT")
    for d, v in row.values.items():  # ours = published + 1 on every dataset, seeds +-1
        seed_runs(str(tmp_path / d / "VLP_CLIP_CAVPT" / "vit_b32_16shots"),
                  [v, v + 1, v + 2], "VLP_CLIP_CAVPT", "vit_b32", d)
    (t16,) = compare(collect_runs(str(tmp_path)), ref)
    cells = _row(t16, "VLP-CLIP-CAVPT vs VLP_CLIP_CAVPT")
    # the logs print one decimal: ours is the rounded value; the average gap stays near +1
    assert cells["Average"].diff == pytest.approx(1.0, abs=0.06)
    assert cells["Average"].ours.spread is not None


def test_dataset_map_reads_a_kit_dataset_as_a_paper_column(tmp_path):
    from results_tree import seed_runs

    seed_runs(str(tmp_path / "synth_shapes" / "SAFE" / "micro_rn_4shots"), [70.0, 71.0, 72.0],
              "SAFE", "micro_rn", "synth_shapes")
    records = collect_runs(str(tmp_path))
    plain = _table(compare(records, load("safe_table1")), 4)
    assert "--reference-map" in " ".join(plain.notes)
    mapped = _table(compare(records, load("safe_table1"),
                            dataset_map={"imagenet": "synth_shapes"}), 4)
    assert _row(mapped, "SAFE (Ours) vs SAFE")["ImageNet"].diff == pytest.approx(71.0 - 63.03)
    with pytest.raises(ConfigError, match="not a column"):
        compare(records, load("safe_table1"), dataset_map={"synth_shapes": "synth_shapes"})


def test_ood_comparison(ood_tree):
    tables = compare(collect_runs(str(ood_tree)), load("safe_table3"))
    assert [t.title.split(": ")[-1] for t in tables] == ["RN50", "ViT-B/16"]
    safe = _row(tables[0], "SAFE(ours) vs SAFE")
    assert safe["ImageNet"].mean == pytest.approx(66.5) and safe["ImageNet"].published == 65.9
    assert safe["ImageNet-V2"].diff == pytest.approx(58.0 - 57.7)
    assert safe["ImageNet-R"].published == 60.3


def test_ablation_tables_render_published_only(fewshot_tree):
    (t,) = compare(collect_runs(str(fewshot_tree)), load("dpt_table3"))
    assert t.columns == ["5", "10", "20", "50", "100", "FULL"]
    row = _row(t, "EuroSAT")
    assert reference.cell_text(row["5"]) == "– / 92.31" and reference.cell_text(row["10"]) == ""


# ------------------------------------------------------------------------ the cli
def test_cli_lists_and_rejects(fewshot_tree):
    code, out = run_cli(["--reference"])
    assert code == 0 and "safe_table1" in out and "SAFE Table I" in out
    code, out = run_cli([fewshot_tree, "--reference", "nope"])
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ERROR:")
    assert "safe_table1" in lines[0] and "dpt_table1" in lines[0]
    code, out = run_cli([fewshot_tree, "--reference", "safe_table1", "--reference-map", "x"])
    assert code == 2 and out.startswith("ERROR: --reference-map")


def test_cli_markdown_and_files(fewshot_tree, tmp_path):
    code, out = run_cli([fewshot_tree, "--reference", "safe_table1", "--shots", "4"])
    assert code == 0
    assert "### SAFE Table I: per-dataset few-shot results, ResNet-50: 4 shots" in out
    assert "92.00 ± 0.82 / 91.72 (+0.28)" in out and "1 shots" not in out
    code, out = run_cli([fewshot_tree, "--reference", "safe_table1", "--shots", "4", "--out",
                         tmp_path, "--format", "md", "csv", "latex"])
    assert code == 0
    names = sorted(os.listdir(tmp_path))
    assert names == ["reference_safe_table1.md", "reference_safe_table1_4shots.csv",
                     "reference_safe_table1_4shots.tex"]
    csv_text = (tmp_path / "reference_safe_table1_4shots.csv").read_text()
    assert "SAFE (Ours) vs SAFE,OxfordPets,90.00,0.82,3/3,88.52,1.48,>1pt" in csv_text
    assert r"\textbf{+1.48}" in (tmp_path / "reference_safe_table1_4shots.tex").read_text()


def test_plots_draw_the_published_curve_dashed(fewshot_tree, tmp_path):
    pytest.importorskip("matplotlib")
    code, out = run_cli([fewshot_tree, "--reference", "safe_table1", "--out", tmp_path,
                         "--plots", "png"])
    assert code == 0 and os.path.isfile(tmp_path / "plots" / "caltech101_safe_table1.png")
    from fsclip.results.reference import reference_figures
    from fsclip.results.tables import TableOptions, build_results

    results = build_results(collect_runs(str(fewshot_tree)), TableOptions())
    trainers = {"SAFE": "SAFE", "TipAdapterF": "TipAdapterF", "ZeroshotCLIP": "ZeroshotCLIP"}
    figures = reference_figures(results.curves, load("safe_table1"), trainers)
    ax = figures["caltech101_safe_table1"].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    safe = lines["SAFE (Table I)"]  # published from the user's 1 to 4 shots (2 too), dashed
    assert safe.get_linestyle() == "--"
    assert list(safe.get_ydata()) == [90.07, 90.69, 91.72]
    assert lines["SAFE"].get_color() == safe.get_color()
    assert lines["ZeroshotCLIP (Table I)"].get_linestyle() == ":"
    # the user's 3 datasets are not the paper's 11: no published average curve
    avg = figures["average_safe_table1"].axes[0]
    assert not any("(Table I)" in ln.get_label() for ln in avg.get_lines())


def test_data_files_are_package_data():
    setup_py = open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read()
    assert '"fsclip.results": ["reference/*.json"]' in setup_py
    for name in reference.available():
        with open(os.path.join(reference.DATA_DIR, name + ".json"), encoding="utf-8") as f:
            assert json.load(f)["name"] == name


def test_average_only_table_compares_the_mean_over_its_datasets(tmp_path):
    """clipsvd_fewshot_avg prints only 11-dataset averages: ours is the mean over the 11."""
    from results_tree import seed_runs

    ref = load("clipsvd_fewshot_avg")
    assert ref.average_only and len(ref.average_over) == 11
    for d in ref.average_over[:10]:
        seed_runs(str(tmp_path / d / "TipAdapterF" / "vit_b16_4shots"), [74.9, 75.0, 75.1],
                  "TipAdapterF", "vit_b16", d)
    records = collect_runs(str(tmp_path))
    t4 = _table(compare(records, ref), 4)
    assert t4.columns == ["Average"]
    assert _row(t4, "Tip-Adapter-F vs TipAdapterF")["Average"].ours is None  # UCF101 missing
    seed_runs(str(tmp_path / "ucf101" / "TipAdapterF" / "vit_b16_4shots"), [74.9, 75.0, 75.1],
              "TipAdapterF", "vit_b16", "ucf101")
    t4 = _table(compare(collect_runs(str(tmp_path)), ref), 4)
    avg = _row(t4, "Tip-Adapter-F vs TipAdapterF")["Average"]
    assert avg.diff == pytest.approx(75.0 - 75.75) and avg.flags == [">2std"]  # std 0.08


def test_the_clip_svd_rows_compare_with_clipsvd_runs(tmp_path):
    """The published CLIP-SVD averages stand for the CLIPSVD trainer's runs (vit_b16)."""
    from results_tree import seed_runs

    ref = load("clipsvd_fewshot_avg")
    for d in ref.average_over:
        seed_runs(str(tmp_path / d / "CLIPSVD" / "vit_b16_4shots"), [77.9, 78.0, 78.1], "CLIPSVD", "vit_b16", d)
    avg = _row(_table(compare(collect_runs(str(tmp_path)), ref), 4), "CLIP-SVD vs CLIPSVD")["Average"]
    assert avg.published == 78.18 and avg.diff == pytest.approx(78.0 - 78.18)


def test_row_patterns_tell_shallow_from_deep_configs(tmp_path):
    """DPT Table 1: VPT_CLIP with a *_shallow config is VPT-CLIP-Shallow, else VPT-CLIP-Deep."""
    from results_tree import seed_runs

    for cfg, acc in (("vit_b16", 80.0), ("vit_b16_shallow", 70.0)):
        seed_runs(str(tmp_path / "eurosat" / "VPT_CLIP" / f"{cfg}_16shots"), [acc] * 3,
                  "VPT_CLIP", cfg, "eurosat")
    (t16,) = compare(collect_runs(str(tmp_path)), load("dpt_table1"))
    rows = dict(t16.rows)
    assert sorted(label for label in rows if " vs " in label) == [
        "VPT-CLIP-Deep vs VPT_CLIP/vit_b16", "VPT-CLIP-Shallow vs VPT_CLIP/vit_b16_shallow"]
    deep = _row(t16, "VPT-CLIP-Deep vs VPT_CLIP/vit_b16")["EuroSAT"]
    assert deep.mean == pytest.approx(80.0) and deep.published == 92.34
    shallow = _row(t16, "VPT-CLIP-Shallow vs VPT_CLIP/vit_b16_shallow")["EuroSAT"]
    assert shallow.mean == pytest.approx(70.0) and shallow.published == 79.33


def test_base2new_reference_averages_base_and_new_over_its_datasets(tmp_path):
    """promptsrc_base2new_avg: ours is base and new averaged over the 11 datasets, H of the two
    averages (CoCoOp's H); empty until every dataset ran. Hand-worked: base 82, 83, 84 (mean 83)
    and new 60, 61, 62 (mean 61) on every dataset -> H = 2 * 83 * 61 / 144 = 70.319."""
    from results_tree import seed_runs, zero_shot

    ref = load("promptsrc_base2new_avg")
    assert ref.kind == "base2new" and len(ref.average_over) == 11

    def runs(datasets):
        for d in datasets:
            for side, accs, eval_only in (("train_base", [82.0, 83.0, 84.0], False), ("test_new", [60.0, 61.0, 62.0], True)):
                seed_runs(str(tmp_path / "base2new" / side / d / "CoOp" / "vit_b16_16shots"), accs, "CoOp", "vit_b16",
                          d, eval_only=eval_only)
            for side, acc in (("train_base", 70.0), ("test_new", 75.0)):
                zero_shot(str(tmp_path / "base2new" / side / d / "ZeroshotCLIP" / "vit_b16"), acc, d, "vit_b16")

    runs(ref.average_over[:10])
    (t,) = compare(collect_runs(str(tmp_path)), ref)
    assert t.columns == ["Base", "New", "H"]
    assert _row(t, "CoOp vs CoOp")["Base"].ours is None  # UCF101 not run yet
    assert _row(t, "MaPLe")["H"].published == 78.55  # a published-only row
    runs(ref.average_over[10:])
    (t,) = compare(collect_runs(str(tmp_path)), ref)
    coop = _row(t, "CoOp vs CoOp")
    assert coop["Base"].mean == pytest.approx(83.0) and coop["Base"].diff == pytest.approx(83.0 - 82.69)
    assert coop["New"].mean == pytest.approx(61.0) and coop["New"].flags == [">1pt", ">2std"]  # -2.22, std 0.82
    assert coop["H"].mean == pytest.approx(2 * 83 * 61 / 144) and coop["H"].published == 71.66
    clip = _row(t, "CLIP vs ZeroshotCLIP")
    assert clip["Base"].mean == pytest.approx(70.0) and clip["H"].mean == pytest.approx(2 * 70 * 75 / 145)
    code, out = run_cli([tmp_path, "--reference", "promptsrc_base2new_avg"])
    assert code == 0 and "CoOp vs CoOp" in out and "71.66" in out
