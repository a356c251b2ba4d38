"""The scheduler service: energy books, the plan and the desired socket states."""
