import sys

from silc_eval.cli import main

sys.exit(main())
