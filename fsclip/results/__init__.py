"""Results of runs: the logs' final results, CoOp's summaries, the papers' tables and plots.

    parse           a run's log.txt -> its result; every run of an output tree, placed by its
                    folders (collect_runs)
    parse_test_res  CoOp's parse_test_res command line (parse_test_res.py, fsclip-parse)
    cells           seeds -> mean +- spread, missing runs, averages over datasets, best marks
    names           dataset display names and the papers' order; method names
    tables          the few-shot (method x dataset per shot count), OOD and base-to-new tables
    render          markdown, LaTeX (booktabs) and CSV
    plots           accuracy-vs-shots curves (matplotlib, optional: pip install 'fsclip[plots]')
    cli             python -m fsclip.results / fsclip-results

Everything but ``plots`` uses the standard library only (and tabulate for CoOp's summaries),
so reading a large output tree does not import torch.
"""

from .parse import (  # noqa: F401
    LOG_NAME, TEST_END, TRAIN_END, RunRecord, RunResult, collect_runs, harmonic_mean,
    metric_regex, parse_dir, parse_log, summarize,
)
from .parse_test_res import (  # noqa: F401
    build_parser, main, report_base2new, report_dir, report_multi_exp, shots_tables,
)
