"""`python -m services.dashboard`: serve the dashboard until SIGINT/SIGTERM."""

from services.dashboard.dashboard import main

raise SystemExit(main())
