"""``python -m ssah`` (and ``torchrun -m ssah``) runs the command line."""
import sys

from .cli import main

sys.exit(main())
