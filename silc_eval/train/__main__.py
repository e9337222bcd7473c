"""`python -m silc_eval.train ...` = `silc-eval train ...`, the form torchrun launches:

    torchrun --nproc_per_node N -m silc_eval.train --recipe silc --device cuda
"""

import sys

from silc_eval.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
