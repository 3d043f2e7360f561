"""Train or evaluate a method: ``python train.py --trainer SAFE --config-file ... [opts]``.

Same arguments as CoOp's train.py; see ``python train.py -h`` and README.md.
"""

import sys

from fsclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
