"""`python -m services.simulator`: run the simulated house (see `main.py`)."""

import sys

from services.simulator.main import main

sys.exit(main())
