"""`python -m services.actuator`: run the actuator until SIGINT/SIGTERM."""

from services.actuator.actuator import main

raise SystemExit(main())
