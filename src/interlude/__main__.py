"""``python -m interlude`` (also what ``torchrun -m interlude`` runs)."""

import sys

from interlude.cli import main

sys.exit(main())
