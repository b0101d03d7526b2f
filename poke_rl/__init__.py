"""poke-rl: offline reinforcement learning for Pokemon Showdown."""

__version__ = "0.1.0"
