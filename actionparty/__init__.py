"""ActionParty reproduction: multi-player action-controlled video diffusion on Melting Pot games."""

__version__ = "0.1.0"
