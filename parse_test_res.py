"""Summarise final results of seed runs from their log.txt files (CoOp's parse_test_res.py).

    python parse_test_res.py output/caltech101/CoOp/rn50_ep50_16shots/nctx16_cscFalse_ctpend
    python parse_test_res.py DIR --ci95 | --test-log | --multi-exp | --keyword macro_f1
    python parse_test_res.py output --table     # method x shots tables per dataset

The logic lives in fsclip/results/parse_test_res.py (also installed as the ``fsclip-parse``
command); the papers' tables and plots come from ``fsclip-results`` (fsclip/results/cli.py).
"""

from fsclip.results import main

if __name__ == "__main__":
    raise SystemExit(main())
