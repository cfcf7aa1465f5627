"""nemesis: faults as data (grudges, kill/restart, pause), applied through a Remote."""
