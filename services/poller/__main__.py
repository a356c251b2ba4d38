"""`python -m services.poller`: run the poller until SIGINT/SIGTERM."""

from services.poller.poller import main

raise SystemExit(main())
