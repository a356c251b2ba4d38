"""`python -m services.prices`: run the prices service until SIGINT/SIGTERM."""

from services.prices.service import main

raise SystemExit(main())
