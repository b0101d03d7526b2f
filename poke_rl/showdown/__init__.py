"""Real battles on Pokemon Showdown, in the order a battle is played: ``server`` (a local server),
``vocab`` (stable id vocabularies), ``observe`` (schema-v2 observations and masks from live
poke-env battles), ``players`` (players that decide in the 10-action space and record
trajectories), ``battles`` (server URLs, formats, the one battle loop), and the two commands on
top: ``collect`` (``poke-rl collect``) and ``online`` (``poke-rl eval --online``)."""
