"""`python -m services.bridge`: run the bridge until SIGINT/SIGTERM."""

from services.bridge.bridge import main

raise SystemExit(main())
