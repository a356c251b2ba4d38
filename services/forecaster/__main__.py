"""`python -m services.forecaster`: run the forecaster until SIGINT/SIGTERM."""

from services.forecaster.forecaster import main

raise SystemExit(main())
