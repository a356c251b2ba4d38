"""`python -m services.scheduler`: run the scheduler until SIGINT/SIGTERM."""

from services.scheduler.scheduler import main

raise SystemExit(main())
