"""`python -m runtime.compound score ...`: see runtime/compound/score.py."""

import sys

from .score import main

sys.exit(main())
