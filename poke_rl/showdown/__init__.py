"""Real battles: a local Pokemon Showdown server, stable id vocabularies, schema-v1 observations
built from live poke-env battles, and players that record trajectories (``poke-rl collect``)."""
